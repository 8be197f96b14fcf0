//! A segment file of a partition: [`Segment`], its path, and creating and checking its header.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::IndexEntry;
use super::layout::{corrupt, READ_CHUNK, SEGMENT_HEADER};
use crate::error::{Error, Result};
use crate::log::PartitionId;
use crate::storage::{self, fs::read_exact_at, FileHandle, FileSystem, OpenMode};

const SEGMENT_MAGIC: &[u8; 8] = b"SNAPSEG1";

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) base: u64,
    pub(super) path: PathBuf,
    pub(super) file: Arc<dyn FileHandle>,
    /// Bytes of valid data, header included.
    pub(super) len: u64,
    pub(super) index: Vec<IndexEntry>,
}

impl Segment {
    /// Where to start a scan for `offset`: (position, offset at it, whether an index entry
    /// gave it rather than the segment header).
    pub(super) fn seek_point(&self, offset: u64) -> (u64, u64, bool) {
        let rel = offset - self.base;
        let i = self.index.partition_point(|e| u64::from(e.rel) <= rel);
        if i == 0 {
            (SEGMENT_HEADER, self.base, false)
        } else {
            let e = self.index[i - 1];
            (u64::from(e.pos), self.base + u64::from(e.rel), true)
        }
    }
}

pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Creates an empty segment file with its header, fsynced.
pub(super) fn create_segment(fs: &dyn FileSystem, dir: &Path, base: u64) -> Result<Segment> {
    let path = segment_path(dir, base);
    let file = fs
        .open(&path, OpenMode::Truncate)
        .map_err(|e| Error::io("create segment", &path, e))?;
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..].copy_from_slice(&base.to_le_bytes());
    file.write_at(&header, 0)
        .map_err(|e| Error::io("write segment header", &path, e))?;
    file.sync()
        .map_err(|e| Error::io("fsync segment", &path, e))?;
    storage::sync_dir(fs, dir)?;
    Ok(Segment {
        base,
        path,
        file,
        len: SEGMENT_HEADER,
        index: Vec::new(),
    })
}

pub(super) fn check_header(id: PartitionId, seg: &Segment) -> Result<()> {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    read_exact_at(seg.file.as_ref(), &mut header, 0)
        .map_err(|e| Error::io("read segment header", &seg.path, e))?;
    if &header[..8] != SEGMENT_MAGIC {
        return Err(corrupt(id, seg.base, &seg.path, "bad segment magic"));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[8..]);
    if u64::from_le_bytes(b) != seg.base {
        return Err(corrupt(
            id,
            seg.base,
            &seg.path,
            format!(
                "segment header names base offset {}, the file name {}",
                u64::from_le_bytes(b),
                seg.base
            ),
        ));
    }
    Ok(())
}

/// True when the file's first `len` bytes (`len` at least a segment header) are all zero: the
/// file was created, and perhaps extended, but none of what was written to it reached the disk.
fn zero_filled(file: &dyn FileHandle, path: &Path, len: u64) -> Result<bool> {
    // The header alone first: for any segment that was created whole, the check ends here.
    let mut header = [0u8; SEGMENT_HEADER as usize];
    read_exact_at(file, &mut header, 0).map_err(|e| Error::io("read segment header", path, e))?;
    if header.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    let mut buf = vec![0u8; (len - SEGMENT_HEADER).min(READ_CHUNK as u64) as usize];
    let mut at = SEGMENT_HEADER;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        read_exact_at(file, chunk, at).map_err(|e| Error::io("read segment", path, e))?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// True when a segment file of `len` bytes is shorter than its header or all zeros.
pub(super) fn header_torn(file: &dyn FileHandle, path: &Path, len: u64) -> Result<bool> {
    Ok(len < SEGMENT_HEADER || zero_filled(file, path, len)?)
}
