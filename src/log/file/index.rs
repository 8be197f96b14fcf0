//! The sparse offset index of a segment: [`IndexEntry`] and its checksummed encoding, the
//! in-memory append rule ([`push_entry`]), and loading and writing index files.

use std::path::{Path, PathBuf};

use super::layout::SEGMENT_HEADER;
use crate::error::Result;
use crate::log::frame::FRAME_HEADER;
use crate::storage::{self, fs::read_exact_at, FileSystem, OpenMode};

const INDEX_ENTRY: usize = 12;

#[derive(Debug, Clone, Copy)]
pub(super) struct IndexEntry {
    pub(super) rel: u32,
    pub(super) pos: u32,
}

impl IndexEntry {
    fn crc(rel: u32, pos: u32) -> u32 {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&rel.to_le_bytes());
        b[4..].copy_from_slice(&pos.to_le_bytes());
        crc32c::crc32c(&b)
    }

    /// Appends the entry's [`INDEX_ENTRY`] bytes.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rel.to_le_bytes());
        out.extend_from_slice(&self.pos.to_le_bytes());
        out.extend_from_slice(&IndexEntry::crc(self.rel, self.pos).to_le_bytes());
    }

    /// The entry stored in `chunk` ([`INDEX_ENTRY`] bytes), or `None` when its checksum fails.
    fn decode(chunk: &[u8]) -> Option<IndexEntry> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(chunk.get(i..i + 4)?.try_into().ok()?))
        };
        let (rel, pos, crc) = (word(0)?, word(4)?, word(8)?);
        (IndexEntry::crc(rel, pos) == crc).then_some(IndexEntry { rel, pos })
    }
}

pub(super) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Appends `entry` to `index` if it lies strictly after the last entry in both offset and
/// position; otherwise (a sync mark already at that point serves as the entry) leaves `index`
/// as it is. Returns whether it appended.
pub(super) fn push_entry(index: &mut Vec<IndexEntry>, entry: IndexEntry) -> bool {
    let after_last = index
        .last()
        .is_none_or(|last| entry.rel > last.rel && entry.pos > last.pos);
    if after_last {
        index.push(entry);
    }
    after_last
}

/// The index file of a segment as loaded.
pub(super) struct LoadedIndex {
    /// The longest prefix of plausible entries: strictly increasing in offset and position, at
    /// or after the segment header, at or before the end of the segment (an entry at the very
    /// end is a sync mark) and, for a sealed segment, at or below the next segment's base.
    pub(super) entries: Vec<IndexEntry>,
    /// The entry that ended that prefix by lying past the end of the segment, if one did.
    pub(super) beyond: Option<IndexEntry>,
    /// True when the file exists and every byte of it was read as one of `entries`.
    pub(super) clean: bool,
}

/// The most index bytes a segment of `seg_len` bytes can need: entries are strictly increasing
/// in position, each at a frame (at least a frame header long) or at the end of the segment.
fn index_read_limit(seg_len: u64) -> u64 {
    (seg_len.saturating_sub(SEGMENT_HEADER) / FRAME_HEADER as u64 + 2) * INDEX_ENTRY as u64
}

/// Reads at most `limit` bytes of the index file at `path`; returns them and whether the
/// file was read to its end. `None` when it cannot be read at all.
fn read_index_file(fs: &dyn FileSystem, path: &Path, limit: u64) -> Option<(Vec<u8>, bool)> {
    let file = fs.open(path, OpenMode::Read).ok()?;
    let len = file.len().ok()?;
    let mut bytes = vec![0u8; len.min(limit) as usize];
    read_exact_at(file.as_ref(), &mut bytes, 0).ok()?;
    Some((bytes, len <= limit))
}

/// Loads the index file of a segment. Entries are verified again on use.
pub(super) fn load_index(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    seg_len: u64,
    max_rel: Option<u64>,
) -> LoadedIndex {
    let ipath = index_path(dir, base);
    let (bytes, whole) = read_index_file(fs, &ipath, index_read_limit(seg_len)).unwrap_or_default();
    let read = whole;
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY);
    let mut beyond = None;
    for chunk in bytes.chunks_exact(INDEX_ENTRY) {
        let Some(IndexEntry { rel, pos }) = IndexEntry::decode(chunk) else {
            // A torn or damaged entry: nothing after it is trusted.
            break;
        };
        let plausible = u64::from(pos) >= SEGMENT_HEADER
            && max_rel.is_none_or(|m| u64::from(rel) <= m)
            && entries
                .last()
                .is_none_or(|last| rel > last.rel && pos > last.pos);
        if !plausible {
            break;
        }
        if u64::from(pos) > seg_len {
            beyond = Some(IndexEntry { rel, pos });
            break;
        }
        entries.push(IndexEntry { rel, pos });
    }
    let clean = read && bytes.len() == entries.len() * INDEX_ENTRY;
    LoadedIndex {
        entries,
        beyond,
        clean,
    }
}

pub(super) fn write_index(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    index: &[IndexEntry],
) -> Result<()> {
    let mut bytes = Vec::with_capacity(index.len() * INDEX_ENTRY);
    for e in index {
        e.encode(&mut bytes);
    }
    storage::write_atomic(fs, &index_path(dir, base), &bytes)
}
