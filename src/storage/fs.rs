//! [`FileSystem`]: the one door to the local file system for every byte that must survive a
//! crash, and [`StdFs`], its implementation on `std::fs`.
//!
//! The log, the local checkpoint storage and the file sink open, write, read, truncate, sync,
//! rename, list and remove files only through this trait, so a test can put them on a disk
//! that loses power ([`SimDisk`](super::sim::SimDisk)). It is deliberately the POSIX file
//! model (positioned reads and writes, `fsync` of files and directories, atomic rename within
//! a file system); an object store, which has no rename or directory sync, implements
//! [`CheckpointStorage`](crate::checkpoint::CheckpointStorage) instead.
//!
//! Errors are `std::io::Error`s: the caller adds what it was doing and the path
//! ([`Error::io`](crate::Error)).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How [`FileSystem::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading.
    Read,
    /// An existing file, for reading and writing, its content kept.
    ReadWrite,
    /// For reading and writing: created if missing, its content kept.
    Create,
    /// For reading and writing: created if missing, emptied if not.
    Truncate,
}

/// A file opened by a [`FileSystem`]. Positioned reads and writes: no cursor, so one handle
/// may serve several readers.
pub trait FileHandle: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many (0 at the end of the file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos` (not durable before [`sync`](Self::sync)).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes (not durable before a sync).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's bytes and length durable (`fsync`).
    fn sync(&self) -> io::Result<()>;
    /// Makes the file's bytes durable, and its length when it changed (`fdatasync`).
    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }
    /// The file's length now.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty now.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn FileHandle, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, pos) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before the bytes asked for",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A local file system (see the module documentation). Implementations must be usable from
/// several threads at once.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>>;
    /// Renames `from` to `to`, replacing `to` (atomic; durable once both directories are
    /// synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of directory `dir` (created, renamed, removed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes file `path` (durable once its directory is synced).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes directory `path` and everything under it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates directory `path` (its parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// The paths of the entries of directory `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The length of file `path`.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Whether `O_DIRECT` writes may be tried on this file system (only [`StdFs`]).
    fn direct_io(&self) -> bool {
        false
    }
}

/// The default [`FileSystem`]: the operating system's, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl StdFs {
    /// The shared instance components use when given no file system.
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(StdFs)
    }
}

#[derive(Debug)]
struct StdFile(File);

impl FileHandle for StdFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl FileSystem for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::Create => o.read(true).write(true).create(true),
            OpenMode::Truncate => o.read(true).write(true).create(true).truncate(true),
        };
        Ok(Arc::new(StdFile(o.open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }
    fn direct_io(&self) -> bool {
        true
    }
}
