//! [`FileSink`]: exactly-once text files, one per task and epoch, made visible by rename.
//!
//! ```text
//! <dir>/.pending/<vertex>=<task>=<epoch:020>=<attempt>.txt.part   being written / pre-committed
//! <dir>/<vertex>=<task>=<epoch:020>=<attempt>.txt                  committed (visible)
//! ```
//! Pre-commit flushes and fsyncs the pending file (and its directory). Commit renames it into
//! `<dir>` and fsyncs the directory; a commit of a file that is already in `<dir>` does
//! nothing, so commits are idempotent. Recovery commits the transactions recorded in the
//! restored checkpoint and deletes every other pending file of the task.
//!
//! Every file operation goes through the sink's [`FileSystem`] ([`StdFs`] unless
//! [`FileSink::with_file_system`] names another). After a failed write or fsync the sink
//! refuses every further write, pre-commit and commit with [`Error::Poisoned`] (class
//! Restart): its task is restarted with a fresh sink, which recovers from the checkpoint and
//! the files on the disk, never from what the kernel may have dropped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::TwoPhaseCommitSink;
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::ids::TaskInfo;
use crate::storage::{self, FileHandle, FileSystem, OpenMode, StdFs};

const PENDING_DIR: &str = ".pending";
const PART: &str = ".part";

/// A pre-committed epoch of one [`FileSink`] task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTxn {
    /// The epoch.
    pub epoch: u64,
    /// The committed file's name (inside the sink directory).
    pub file: String,
    /// Records in the file; an empty epoch has no file.
    pub records: u64,
}

/// Appends a record's text to a line buffer.
type Format<T> = Arc<dyn Fn(&T, &mut String) + Send + Sync>;

/// Bytes gathered before one write to the pending file.
const WRITE_BUFFER: usize = 256 * 1024;

struct OpenFile {
    name: String,
    path: PathBuf,
    file: Arc<dyn FileHandle>,
    /// Bytes not yet written to the file, and where they go.
    buf: Vec<u8>,
    pos: u64,
    records: u64,
}

impl OpenFile {
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_at(&self.buf, self.pos)?;
            self.pos += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Writes each record as one line of text (`format` appends it to the line buffer). See the
/// module documentation for the file protocol.
pub struct FileSink<T> {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    format: Format<T>,
    prefix: Option<String>,
    attempt: u32,
    epoch: u64,
    open: Option<OpenFile>,
    line: String,
    /// Why the sink refuses writes, after a failed write or sync.
    refused: Option<String>,
}

impl<T> std::fmt::Debug for FileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl<T> Clone for FileSink<T> {
    fn clone(&self) -> Self {
        FileSink {
            fs: Arc::clone(&self.fs),
            dir: self.dir.clone(),
            format: Arc::clone(&self.format),
            prefix: None,
            attempt: 0,
            epoch: 0,
            open: None,
            line: String::new(),
            refused: None,
        }
    }
}

impl<T> FileSink<T> {
    /// A sink writing into `dir`, formatting each record with `format` (which appends the
    /// record's text, without a newline, to the `String` it is given).
    pub fn new(
        dir: impl Into<PathBuf>,
        format: impl Fn(&T, &mut String) + Send + Sync + 'static,
    ) -> Self {
        FileSink {
            fs: StdFs::shared(),
            dir: dir.into(),
            format: Arc::new(format),
            prefix: None,
            attempt: 0,
            epoch: 0,
            open: None,
            line: String::new(),
            refused: None,
        }
    }

    /// Writes through `fs` instead of the operating system's file system (a
    /// [`SimDisk`](crate::storage::sim::SimDisk) in crash tests).
    pub fn with_file_system(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.fs = fs;
        self
    }

    /// The committed files of a sink directory, in name order (task, then epoch).
    pub fn committed_files(dir: &Path) -> Result<Vec<PathBuf>> {
        Self::committed_files_on(&StdFs, dir)
    }

    /// [`committed_files`](Self::committed_files) on the file system `fs`.
    pub fn committed_files_on(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<PathBuf>> {
        if !fs.is_dir(dir) {
            return Ok(Vec::new());
        }
        let mut files: Vec<PathBuf> = fs
            .list(dir)
            .map_err(|e| Error::io("list sink directory", dir, e))?
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.ends_with(".txt") && !name.starts_with('.')
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every committed line of a sink directory, file by file in name order.
    pub fn read_committed(dir: &Path) -> Result<Vec<String>> {
        Self::read_committed_on(&StdFs, dir)
    }

    /// [`read_committed`](Self::read_committed) on the file system `fs`. A committed file is
    /// read whole (it was written by this sink, one epoch of one task).
    pub fn read_committed_on(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        for f in Self::committed_files_on(fs, dir)? {
            let bytes = storage::read_bounded(fs, &f, u64::MAX)?.map_err(Error::Config)?;
            let text = String::from_utf8(bytes).map_err(|e| {
                Error::io(
                    "read committed file",
                    &f,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?;
            lines.extend(text.lines().map(str::to_string));
        }
        Ok(lines)
    }

    fn exists(&self, path: &Path) -> bool {
        self.fs.file_len(path).is_ok()
    }

    /// Fails once an earlier write failed; see the module documentation.
    fn check_refused(&self) -> Result<()> {
        match &self.refused {
            Some(reason) => Err(Error::Poisoned {
                what: format!("file sink {}", self.dir.display()),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records an I/O failure of `result`: every later write is refused.
    fn note<R>(&mut self, result: Result<R>) -> Result<R> {
        if let Err(e @ Error::Io { .. }) = &result {
            tracing::error!(sink = %self.dir.display(), error = %e, "file sink write failed; refusing further writes");
            self.refused = Some(e.to_string());
            self.open = None;
        }
        result
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join(PENDING_DIR)
    }

    fn prefix(&self) -> Result<&str> {
        self.prefix
            .as_deref()
            .ok_or_else(|| Error::Config("FileSink used before open".into()))
    }

    /// The file of `epoch` written by this attempt of the task. The attempt keeps the files
    /// of two incarnations of one task apart, should a dying one still be writing.
    fn file_name(&self, epoch: u64) -> Result<String> {
        Ok(format!(
            "{}{epoch:020}={}.txt",
            self.prefix()?,
            self.attempt
        ))
    }
}

/// Checks a transaction's file name, which may come back from a checkpoint: it must have the
/// shape `<vertex>=<task>=<epoch:020>=<attempt>.txt` this sink gives its files, with a valid
/// vertex name. Anything else (an empty name, a path, a hidden file) would make a commit rename
/// the wrong file, or nothing at all while reporting success.
pub(crate) fn check_file_name(name: &str) -> Result<()> {
    let refuse = |reason| {
        Err(Error::InvalidName {
            kind: "sink transaction file",
            name: name.to_string(),
            reason,
        })
    };
    let Some(stem) = name.strip_suffix(".txt") else {
        return refuse("it does not end in .txt");
    };
    let parts: Vec<&str> = stem.split('=').collect();
    let [vertex, task, epoch, attempt] = parts[..] else {
        return refuse("it is not <vertex>=<task>=<epoch>=<attempt>.txt");
    };
    if storage::validate_name("vertex", vertex).is_err() {
        return refuse("its vertex part is not a valid vertex name");
    }
    let digits = |s: &str, len: Option<usize>| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && len.is_none_or(|l| s.len() == l)
            && s.len() <= 20
    };
    if !digits(task, None) || !digits(epoch, Some(20)) || !digits(attempt, None) {
        return refuse("its task, epoch or attempt part is not a number of the right form");
    }
    Ok(())
}

impl<T: Send + 'static> TwoPhaseCommitSink<T> for FileSink<T> {
    type Txn = FileTxn;

    fn open(&mut self, task: &TaskInfo) -> Result<()> {
        // '=' cannot appear in a vertex name, so no task's prefix is a prefix of another's.
        self.prefix = Some(format!("{}={}=", task.task.vertex, task.task.index));
        self.attempt = task.attempt;
        storage::create_dir_durable(self.fs.as_ref(), &self.dir)?;
        storage::create_dir_durable(self.fs.as_ref(), &self.pending_dir())
    }

    fn begin(&mut self, epoch: CheckpointId) -> Result<()> {
        self.epoch = epoch.0;
        self.open = None;
        Ok(())
    }

    fn write(&mut self, record: T) -> Result<()> {
        self.check_refused()?;
        let written = self.write_line(record);
        self.note(written)
    }

    fn pre_commit(&mut self, epoch: CheckpointId) -> Result<FileTxn> {
        self.check_refused()?;
        let done = self.sync_pending(epoch);
        self.note(done)
    }

    fn commit(&mut self, txn: &FileTxn) -> Result<()> {
        self.check_refused()?;
        let done = self.rename_into_place(txn);
        self.note(done)
    }

    fn recover(&mut self, committed: &[FileTxn]) -> Result<()> {
        self.check_refused()?;
        let done = self.recover_files(committed);
        self.note(done)
    }
}

impl<T> FileSink<T> {
    fn write_line(&mut self, record: T) -> Result<()> {
        if self.open.is_none() {
            let name = self.file_name(self.epoch)?;
            let path = self.pending_dir().join(format!("{name}{PART}"));
            let file = self
                .fs
                .open(&path, OpenMode::Truncate)
                .map_err(|e| Error::io("create pending file", &path, e))?;
            self.open = Some(OpenFile {
                name,
                path,
                file,
                buf: Vec::with_capacity(WRITE_BUFFER),
                pos: 0,
                records: 0,
            });
        }
        self.line.clear();
        (self.format)(&record, &mut self.line);
        self.line.push('\n');
        let Some(open) = self.open.as_mut() else {
            return Err(Error::Config("FileSink lost its open file".into()));
        };
        open.buf.extend_from_slice(self.line.as_bytes());
        if open.buf.len() >= WRITE_BUFFER {
            open.flush()
                .map_err(|e| Error::io("write pending file", &open.path, e))?;
        }
        open.records += 1;
        Ok(())
    }

    fn sync_pending(&mut self, epoch: CheckpointId) -> Result<FileTxn> {
        let Some(mut open) = self.open.take() else {
            return Ok(FileTxn {
                epoch: epoch.0,
                file: self.file_name(epoch.0)?,
                records: 0,
            });
        };
        // The file is named after the epoch it was opened in; the txn names that file.
        let file = open.name.clone();
        open.flush()
            .map_err(|e| Error::io("write pending file", &open.path, e))?;
        open.file
            .sync()
            .map_err(|e| Error::io("fsync pending file", &open.path, e))?;
        storage::sync_dir(self.fs.as_ref(), &self.pending_dir())?;
        Ok(FileTxn {
            epoch: epoch.0,
            file,
            records: open.records,
        })
    }

    fn rename_into_place(&mut self, txn: &FileTxn) -> Result<()> {
        check_file_name(&txn.file)?;
        if txn.records == 0 {
            return Ok(());
        }
        let src = self.pending_dir().join(format!("{}{PART}", txn.file));
        let dst = self.dir.join(&txn.file);
        if self.exists(&dst) {
            // Committed before (a commit repeated after a crash); drop a leftover copy.
            if self.exists(&src) {
                self.fs
                    .remove_file(&src)
                    .map_err(|e| Error::io("remove committed pending file", &src, e))?;
            }
            // The rename may have been made before a crash without its directory sync.
            storage::sync_dir(self.fs.as_ref(), &self.dir)?;
            return storage::sync_dir(self.fs.as_ref(), &self.pending_dir());
        }
        match self.fs.rename(&src, &dst) {
            Ok(()) => {}
            // Committed concurrently by another task recovering the same checkpoint.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.exists(&dst) => {
                return Ok(())
            }
            Err(e) => return Err(Error::io("commit (rename) pending file", &src, e)),
        }
        storage::sync_dir(self.fs.as_ref(), &self.dir)?;
        storage::sync_dir(self.fs.as_ref(), &self.pending_dir())
    }

    fn recover_files(&mut self, committed: &[FileTxn]) -> Result<()> {
        // Names come back from a checkpoint: check them all before acting on any.
        for txn in committed {
            check_file_name(&txn.file)?;
        }
        for txn in committed {
            self.rename_into_place(txn)?;
        }
        let keep: HashSet<String> = committed
            .iter()
            .map(|t| format!("{}{PART}", t.file))
            .collect();
        let prefix = self.prefix()?.to_string();
        let pending = self.pending_dir();
        let mut removed = 0;
        let entries = self
            .fs
            .list(&pending)
            .map_err(|e| Error::io("list pending files", &pending, e))?;
        for path in entries {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(&prefix) && !keep.contains(name.as_ref()) {
                self.fs
                    .remove_file(&path)
                    .map_err(|err| Error::io("abort pending file", &path, err))?;
                removed += 1;
            }
        }
        if removed > 0 {
            storage::sync_dir(self.fs.as_ref(), &pending)?;
            tracing::info!(sink = %self.dir.display(), task = %prefix, aborted = removed, "file sink aborted uncommitted epochs");
        }
        Ok(())
    }
}
