//! [`LocalCheckpointStorage`]: checkpoints in a local directory.
//!
//! ```text
//! <root>/<job>/chk-00000000000000000042/
//!     task-<vertex>-<index>.state    envelope("SNAPSTAT", task snapshot bytes)
//!     _manifest                      envelope("SNAPMANI", msgpack manifest), written last
//! ```
//! Every file is written with write-temp, fsync, rename, fsync-dir. A checkpoint is removed
//! manifest first (then the directory is synced), so a crash half-way through a removal leaves
//! an incomplete checkpoint, never a complete one with missing files.
//!
//! Every file operation goes through the storage's [`FileSystem`] ([`StdFs`] unless
//! [`LocalCheckpointStorage::with_file_system`] names another). After a failed write, fsync,
//! rename or removal the storage refuses every further write with [`Error::Poisoned`] (class
//! Restart): the kernel may have dropped what it reported as written, so nothing may be built
//! on it. The refusal ends when a restore reads the storage again
//! ([`CheckpointStorage::latest_complete`], [`CheckpointStorage::verify`]), which reads only
//! what is on the disk. Removing a checkpoint's files after its manifest's removal is durable
//! is best effort: a failure there leaves an incomplete checkpoint and refuses nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::HashMap;

use super::{
    check_state, decode_any_manifest, decode_manifest, encode_manifest, CheckpointId,
    CheckpointKind, CheckpointStorage, CompletedCheckpoint, Manifest, StateHandle, TaskId,
    MAX_MANIFEST_BYTES, STATE_MAGIC,
};
use crate::error::{Error, Result};
use crate::storage::{self, FileSystem, StdFs};

const MANIFEST_FILE: &str = "_manifest";
const DIR_PREFIX: &str = "chk-";

/// Checkpoint storage in a local directory. See the module documentation for the layout.
#[derive(Debug)]
pub struct LocalCheckpointStorage {
    fs: Arc<dyn FileSystem>,
    job: String,
    dir: PathBuf,
    retain: usize,
    max_state_bytes: u64,
    /// State files of at least this many bytes are written with direct I/O.
    direct_min_bytes: Option<u64>,
    /// Set once the file system has refused direct I/O: every write is buffered after that.
    direct_refused: AtomicBool,
    /// Aligned buffers of direct writes, one per concurrent writer, kept for the next ones.
    direct_bufs: Mutex<Vec<storage::AlignedBuf>>,
    /// Why writes are refused, after a failed write or sync (see the module documentation).
    refused: Mutex<Option<String>>,
    /// The kind of each complete checkpoint whose manifest was written or read (a manifest
    /// never changes): retention keeps savepoints.
    kinds: Mutex<HashMap<CheckpointId, CheckpointKind>>,
}

/// The default of [`LocalCheckpointStorage::with_direct_io`]: 1 MiB.
pub const DEFAULT_DIRECT_IO_MIN_BYTES: u64 = 1 << 20;

impl LocalCheckpointStorage {
    /// Storage for `job`'s checkpoints under `root/job`, keeping the newest 3 complete ones.
    /// The job name must be a safe file name ([`crate::validate_name`]).
    pub fn new(root: impl AsRef<Path>, job: &str) -> Result<LocalCheckpointStorage> {
        Self::with_file_system(StdFs::shared(), root, job)
    }

    /// [`new`](Self::new) on the file system `fs` (a [`SimDisk`](crate::storage::sim::SimDisk)
    /// in crash tests). Direct I/O is used only where `fs` allows it.
    pub fn with_file_system(
        fs: Arc<dyn FileSystem>,
        root: impl AsRef<Path>,
        job: &str,
    ) -> Result<LocalCheckpointStorage> {
        storage::validate_name("job", job)?;
        let dir = root.as_ref().join(job);
        storage::create_dir_durable(fs.as_ref(), &dir)?;
        Ok(LocalCheckpointStorage::unchecked(fs, job.to_string(), dir))
    }

    /// A storage for reading checkpoints and savepoints by location only
    /// ([`CheckpointStorage::verify_location`], [`CheckpointStorage::read_task_state_at`]), for
    /// tools: it belongs to no job, owns no directory and creates none. Do not write through it.
    pub fn reader() -> LocalCheckpointStorage {
        LocalCheckpointStorage::unchecked(StdFs::shared(), String::new(), PathBuf::new())
    }

    /// The storage of `job` in `dir`, neither checked nor created.
    fn unchecked(fs: Arc<dyn FileSystem>, job: String, dir: PathBuf) -> LocalCheckpointStorage {
        LocalCheckpointStorage {
            direct_min_bytes: fs.direct_io().then_some(DEFAULT_DIRECT_IO_MIN_BYTES),
            fs,
            job,
            dir,
            retain: 3,
            max_state_bytes: 16 << 30,
            direct_refused: AtomicBool::new(false),
            direct_bufs: Mutex::new(Vec::new()),
            refused: Mutex::new(None),
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Writes state files of at least `min_bytes` bytes with direct I/O (`O_DIRECT`, Linux):
    /// from an aligned buffer to the device, without copying them into the kernel's page cache
    /// first, which saves the writing thread about a third of a checkpoint's CPU cost for large
    /// states (see `src/storage/direct.rs`). `None` writes every file through the page cache.
    /// Default: [`DEFAULT_DIRECT_IO_MIN_BYTES`]. The durability protocol is the same either
    /// way; on a file system that refuses direct I/O the storage logs it once and buffers
    /// every write. Each concurrent writer keeps one buffer the size of its largest file.
    pub fn with_direct_io(mut self, min_bytes: Option<u64>) -> Self {
        self.direct_min_bytes = min_bytes.filter(|_| self.fs.direct_io());
        self
    }

    fn refusal(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // An optional sentence: consistent whatever a panicking holder did.
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the write `f`, unless an earlier write failed; an I/O failure of `f` makes the
    /// storage refuse every later write.
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some(reason) = self.refusal().clone() {
            return Err(Error::Poisoned {
                what: format!("checkpoint storage {}", self.dir.display()),
                reason,
            });
        }
        let result = f();
        if let Err(e @ Error::Io { .. }) = &result {
            tracing::error!(job = %self.job, error = %e, "checkpoint storage write failed; refusing further writes until a restore");
            *self.refusal() = Some(e.to_string());
        }
        result
    }

    fn exists(&self, path: &Path) -> bool {
        self.fs.file_len(path).is_ok()
    }

    /// Writes a state file (the envelope of the concatenation of `parts`) directly when it is
    /// large enough and the file system allows it. Returns the payload's CRC32C if it was
    /// computed, and whether the file was written.
    fn write_state_direct(&self, path: &Path, parts: &[&[u8]]) -> Result<(Option<u32>, bool)> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let wanted = self.direct_min_bytes.is_some_and(|min| len as u64 >= min);
        if !wanted || self.direct_refused.load(Ordering::Relaxed) {
            return Ok((None, false));
        }
        // The pool holds only whole buffers: a poisoned lock is still consistent.
        let pool = || self.direct_bufs.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = pool().pop().unwrap_or_default();
        let written = storage::write_enveloped_direct(path, STATE_MAGIC, parts, &mut buf);
        {
            let mut pool = pool();
            if pool.len() < 64 && buf.capacity() > 0 {
                pool.push(buf);
            }
        }
        let (crc, done) = written?;
        if !done && !self.direct_refused.swap(true, Ordering::Relaxed) {
            tracing::info!(
                dir = %self.dir.display(),
                "the file system refuses direct I/O: checkpoint files are written through the page cache"
            );
        }
        Ok((Some(crc), done))
    }

    /// Keeps the newest `k` complete checkpoints (at least 1).
    pub fn with_retain(mut self, k: usize) -> Self {
        self.retain = k.max(1);
        self
    }

    /// Refuses to read state files larger than `bytes` (default 16 GiB), treating them as
    /// corrupt rather than allocating for them.
    pub fn with_max_state_bytes(mut self, bytes: u64) -> Self {
        self.max_state_bytes = bytes;
        self
    }

    /// The job's checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of checkpoint `id`.
    pub fn checkpoint_dir(&self, id: CheckpointId) -> PathBuf {
        self.dir.join(format!("{DIR_PREFIX}{:020}", id.0))
    }

    fn corrupt(&self, id: CheckpointId, path: &Path, reason: impl Into<String>) -> Error {
        Error::CheckpointCorrupt {
            checkpoint: id,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Every checkpoint directory, complete or not, oldest first.
    fn all_ids(&self) -> Result<Vec<CheckpointId>> {
        let mut ids = Vec::new();
        let entries = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::io("list checkpoints in", &self.dir, e))?;
        for entry in entries {
            let name = entry.file_name().unwrap_or_default().to_string_lossy();
            if let Some(n) = name.strip_prefix(DIR_PREFIX) {
                if n.len() == 20 {
                    if let Ok(id) = n.parse::<u64>() {
                        ids.push(CheckpointId(id));
                    }
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn remove_checkpoint(&self, id: CheckpointId) -> Result<()> {
        let dir = self.checkpoint_dir(id);
        let manifest = dir.join(MANIFEST_FILE);
        // The kinds cache holds only checkpoints on the disk: it stays as small as retention.
        self.kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match self.fs.remove_file(&manifest) {
            Ok(()) => storage::sync_dir(self.fs.as_ref(), &dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove manifest", &manifest, e)),
        }
        // Once the manifest's removal is durable, the rest need not be: files left behind form
        // an incomplete checkpoint, never restored. So a failure here (a task of an aborted
        // checkpoint renaming its late state file into the directory being removed gives
        // "directory not empty") is retried, then left with a warning: it must not make the
        // storage refuse writes, since nothing written is in doubt.
        let mut attempts = 0;
        loop {
            match self.fs.remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if attempts < 2 => {
                    attempts += 1;
                    tracing::debug!(job = %self.job, dir = %dir.display(), error = %e, "removing a checkpoint directory failed; trying again");
                }
                Err(e) => {
                    tracing::warn!(job = %self.job, dir = %dir.display(), error = %e,
                        "left the files of a removed checkpoint behind (it has no manifest: it will never be restored)");
                    return Ok(());
                }
            }
        }
    }

    /// The kind of complete checkpoint `id`, from its manifest (read once). An unreadable
    /// manifest counts as a checkpoint's: it can never be restored, so retention may remove it.
    fn kind_of(&self, id: CheckpointId) -> CheckpointKind {
        let kinds = || self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kinds().get(&id) {
            return *k;
        }
        let path = self.checkpoint_dir(id).join(MANIFEST_FILE);
        let limit = MAX_MANIFEST_BYTES + storage::ENVELOPE_HEADER as u64;
        let read = storage::read_bounded(self.fs.as_ref(), &path, limit);
        match read
            .ok()
            .and_then(|r| r.ok())
            .map(|b| decode_any_manifest(&b))
        {
            Some(Ok(m)) => {
                kinds().insert(id, m.kind);
                m.kind
            }
            _ => CheckpointKind::Checkpoint,
        }
    }

    fn apply_retention(&self, committed: CheckpointId) -> Result<()> {
        // Savepoints are never removed, nor counted among the checkpoints kept.
        let complete: Vec<CheckpointId> = self
            .completed_ids()?
            .into_iter()
            .filter(|id| self.kind_of(*id) == CheckpointKind::Checkpoint)
            .collect();
        let keep_from = complete.len().saturating_sub(self.retain);
        for &id in &complete[..keep_from] {
            self.remove_checkpoint(id)?;
            tracing::debug!(job = %self.job, checkpoint = %id, "retention removed checkpoint");
        }
        for id in self.all_ids()? {
            let has_manifest = self.exists(&self.checkpoint_dir(id).join(MANIFEST_FILE));
            if id < committed && !has_manifest {
                self.remove_checkpoint(id)?;
                tracing::debug!(job = %self.job, checkpoint = %id, "removed stale incomplete checkpoint");
            }
        }
        Ok(())
    }
}

impl CheckpointStorage for LocalCheckpointStorage {
    fn job(&self) -> &str {
        &self.job
    }

    fn retained(&self) -> usize {
        self.retain
    }

    fn write_task_state(
        &self,
        id: CheckpointId,
        task: &TaskId,
        bytes: &[u8],
    ) -> Result<StateHandle> {
        self.write_task_state_parts(id, task, &[bytes])
    }

    fn write_task_state_parts(
        &self,
        id: CheckpointId,
        task: &TaskId,
        parts: &[&[u8]],
    ) -> Result<StateHandle> {
        self.guarded(|| self.write_state(id, task, parts))
    }

    fn commit(&self, manifest: &Manifest) -> Result<()> {
        self.guarded(|| self.write_manifest(manifest))
    }

    fn abort(&self, id: CheckpointId) -> Result<()> {
        self.guarded(|| self.remove_incomplete(id))
    }

    fn completed_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self
            .all_ids()?
            .into_iter()
            .filter(|id| self.exists(&self.checkpoint_dir(*id).join(MANIFEST_FILE)))
            .collect())
    }

    fn max_id(&self) -> Result<Option<CheckpointId>> {
        Ok(self.all_ids()?.last().copied())
    }

    fn latest_complete(&self) -> Result<Option<CompletedCheckpoint>> {
        // A restore reads what is on the disk, even when it finds no checkpoint at all: writes
        // may go on after it (without this, a storage refused before its first checkpoint
        // completed would refuse forever).
        *self.refusal() = None;
        super::latest_verified(self)
    }

    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        // A restore reads what is on the disk: writes may go on after it.
        *self.refusal() = None;
        self.verify_files(id)
    }

    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        self.read_state(&self.checkpoint_dir(id), id, handle)
    }

    fn read_manifest(&self, id: CheckpointId) -> Result<Manifest> {
        self.read_manifest_in(&self.checkpoint_dir(id), id, Some(id))
    }

    fn location(&self, id: CheckpointId) -> String {
        self.checkpoint_dir(id).display().to_string()
    }

    fn verify_location(&self, location: &str) -> Result<CompletedCheckpoint> {
        // A restore reads what is on the disk: writes may go on after it.
        *self.refusal() = None;
        let dir = PathBuf::from(location);
        // Until the manifest is read, the directory's name is the best guess at the id.
        let guess = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|n| n.parse().ok())
            .map_or(CheckpointId(0), CheckpointId);
        let manifest = self.read_manifest_in(&dir, guess, None)?;
        for t in &manifest.tasks {
            self.read_state(&dir, manifest.checkpoint, &t.state)?;
        }
        Ok(CompletedCheckpoint {
            location: location.to_string(),
            manifest,
        })
    }

    fn read_task_state_at(&self, location: &str, handle: &StateHandle) -> Result<Vec<u8>> {
        self.read_state(Path::new(location), CheckpointId(0), handle)
    }
}

impl LocalCheckpointStorage {
    fn write_state(&self, id: CheckpointId, task: &TaskId, parts: &[&[u8]]) -> Result<StateHandle> {
        storage::validate_name("vertex", &task.vertex)?;
        let dir = self.checkpoint_dir(id);
        if self.exists(&dir.join(MANIFEST_FILE)) {
            return Err(Error::Config(format!(
                "checkpoint {id} is already complete; its state cannot change"
            )));
        }
        storage::create_dir_durable(self.fs.as_ref(), &dir)?;
        // The parts are written as they are, never joined: into the aligned buffer of a direct
        // write (checksummed as they are copied), or one after the other after the header of a
        // buffered one. The directory fsync that makes the rename durable is shared by every
        // task's file: `commit` does it once, before the manifest that names the files.
        let file = task.state_file_name();
        let path = dir.join(&file);
        let size = parts.iter().map(|p| p.len()).sum::<usize>();
        let (crc, written) = self.write_state_direct(&path, parts)?;
        let crc = crc.unwrap_or_else(|| parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p)));
        if !written {
            let header = storage::envelope_header(STATE_MAGIC, size, crc);
            let mut all = Vec::with_capacity(parts.len() + 1);
            all.push(&header[..]);
            all.extend_from_slice(parts);
            storage::write_renamed(self.fs.as_ref(), &path, &all)?;
        }
        Ok(StateHandle {
            file,
            size: size as u64,
            crc32c: crc,
        })
    }

    fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let id = manifest.checkpoint;
        if manifest.job != self.job {
            return Err(Error::Config(format!(
                "manifest of job {:?} committed to the storage of job {:?}",
                manifest.job, self.job
            )));
        }
        let bytes = encode_manifest(manifest)?;
        let dir = self.checkpoint_dir(id);
        storage::create_dir_durable(self.fs.as_ref(), &dir)?;
        for t in &manifest.tasks {
            let path = dir.join(&t.state.file);
            let len = self
                .fs
                .file_len(&path)
                .map_err(|e| Error::io("stat state file", &path, e))?;
            if len != storage::ENVELOPE_HEADER as u64 + t.state.size {
                return Err(self.corrupt(
                    id,
                    &path,
                    format!(
                        "state file is {len} bytes, expected {}",
                        storage::ENVELOPE_HEADER as u64 + t.state.size
                    ),
                ));
            }
        }
        // The state files were renamed into place without a directory fsync
        // (`write_task_state`): one fsync here makes all of them durable before the manifest.
        storage::sync_dir(self.fs.as_ref(), &dir)?;
        storage::write_atomic(self.fs.as_ref(), &dir.join(MANIFEST_FILE), &bytes)?;
        tracing::info!(job = %self.job, checkpoint = %id, tasks = manifest.tasks.len(),
            bytes = manifest.state_bytes(), "checkpoint complete");
        self.apply_retention(id)
    }

    fn remove_incomplete(&self, id: CheckpointId) -> Result<()> {
        let dir = self.checkpoint_dir(id);
        if self.exists(&dir.join(MANIFEST_FILE)) {
            return Err(Error::Config(format!(
                "checkpoint {id} is complete and cannot be aborted"
            )));
        }
        self.remove_checkpoint(id)?;
        tracing::info!(job = %self.job, checkpoint = %id, "checkpoint aborted; files removed");
        Ok(())
    }

    fn verify_files(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        let dir = self.checkpoint_dir(id);
        let manifest = self.read_manifest_in(&dir, id, Some(id))?;
        for t in &manifest.tasks {
            self.read_task_state(id, &t.state)?;
        }
        Ok(CompletedCheckpoint {
            location: self.location(id),
            manifest,
        })
    }

    /// Reads and checks the manifest in `dir`: of checkpoint `expect` of this job, or of any
    /// checkpoint of any job when `expect` is `None` (a savepoint read by location). `id`
    /// names the checkpoint in errors.
    fn read_manifest_in(
        &self,
        dir: &Path,
        id: CheckpointId,
        expect: Option<CheckpointId>,
    ) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match storage::read_bounded(
            self.fs.as_ref(),
            &path,
            MAX_MANIFEST_BYTES + storage::ENVELOPE_HEADER as u64,
        ) {
            Ok(Ok(b)) => b,
            Ok(Err(reason)) => return Err(self.corrupt(id, &path, reason)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(match expect {
                    Some(_) => Error::CheckpointNotFound {
                        job: self.job.clone(),
                        checkpoint: id,
                    },
                    None => Error::NothingAtLocation {
                        location: dir.display().to_string(),
                    },
                })
            }
            Err(e) => return Err(e),
        };
        let manifest = match expect {
            Some(id) => decode_manifest(&bytes, id, &self.job),
            None => decode_any_manifest(&bytes),
        }
        .map_err(|r| self.corrupt(id, &path, r))?;
        Ok(manifest)
    }

    /// Reads the state file of `handle` in the directory `dir` of checkpoint `id`.
    fn read_state(&self, dir: &Path, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        if storage::validate_name("state file", &handle.file).is_err() {
            return Err(self.corrupt(id, dir, format!("unsafe state file name {:?}", handle.file)));
        }
        let path = dir.join(&handle.file);
        if handle.size > self.max_state_bytes {
            return Err(self.corrupt(
                id,
                &path,
                format!(
                    "state of {} bytes exceeds the limit of {}",
                    handle.size, self.max_state_bytes
                ),
            ));
        }
        let bytes = match storage::read_bounded(
            self.fs.as_ref(),
            &path,
            handle.size + storage::ENVELOPE_HEADER as u64,
        ) {
            Ok(Ok(b)) => b,
            Ok(Err(reason)) => return Err(self.corrupt(id, &path, reason)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.corrupt(id, &path, "state file is missing"))
            }
            Err(e) => return Err(e),
        };
        let payload = check_state(&bytes, handle).map_err(|r| self.corrupt(id, &path, r))?;
        Ok(payload.to_vec())
    }
}
