//! Opening a partition's segments: listing them, loading and verifying (or rebuilding) the
//! index of a sealed segment, and recovering the active segment's tail (scan, torn-tail
//! truncation, end mark).

use std::path::Path;
use std::sync::Arc;

use super::index::{load_index, push_entry, write_index, IndexEntry, LoadedIndex};
use super::layout::{corrupt, SEGMENT_HEADER};
use super::reader::{FrameReader, Next};
use super::segment::{check_header, create_segment, header_torn, segment_path, Segment};
use crate::error::{Error, Result};
use crate::log::frame::FRAME_HEADER;
use crate::log::PartitionId;
use crate::storage::{FileHandle, FileSystem, OpenMode};

/// True when the frame at `entry` stores the offset the entry claims.
fn entry_matches(seg: &Segment, entry: IndexEntry, max_read: u32) -> bool {
    let mut r = FrameReader::new(seg.file.as_ref(), u64::from(entry.pos), seg.len, max_read);
    matches!(r.next(), Ok(Next::Frame { offset, .. }) if offset == seg.base + u64::from(entry.rel))
}

/// Result of scanning frames: where the valid data ends, the next offset, and why it stopped.
struct ScanEnd {
    pos: u64,
    next_offset: u64,
    bytes_since_index: u64,
    bad: Option<String>,
}

/// Scans frames from `pos` (holding `offset`) to `limit`, appending index entries by the same
/// rule as appends do.
fn scan_frames(
    seg: &mut Segment,
    pos: u64,
    offset: u64,
    limit: u64,
    max_read: u32,
    index_interval_bytes: u32,
) -> std::io::Result<ScanEnd> {
    let mut reader = FrameReader::new(seg.file.as_ref(), pos, limit, max_read);
    let mut expect = offset;
    let mut end_pos = pos;
    let mut since = 0u64;
    let mut new_entries = Vec::new();
    let bad = loop {
        match reader.next()? {
            Next::End => break None,
            Next::Bad { reason, .. } => break Some(reason),
            Next::Frame {
                pos, offset, len, ..
            } => {
                if offset != expect {
                    break Some(format!(
                        "found the record of offset {offset} where {expect} belongs"
                    ));
                }
                if since >= u64::from(index_interval_bytes) {
                    new_entries.push(IndexEntry {
                        rel: (expect - seg.base) as u32,
                        pos: pos as u32,
                    });
                    since = 0;
                }
                let frame_len = (FRAME_HEADER + len) as u64;
                since += frame_len;
                expect += 1;
                end_pos = pos + frame_len;
            }
        }
    };
    for e in new_entries {
        push_entry(&mut seg.index, e);
    }
    Ok(ScanEnd {
        pos: end_pos,
        next_offset: expect,
        bytes_since_index: since,
        bad,
    })
}

pub(super) fn open_sealed(
    fs: &dyn FileSystem,
    id: PartitionId,
    dir: &Path,
    base: u64,
    next_base: Option<u64>,
    max_read: u32,
    index_interval_bytes: u32,
) -> Result<Segment> {
    let path = segment_path(dir, base);
    let file = fs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let len = file
        .len()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    let max_rel = next_base.map(|n| n - base);
    let mut seg = Segment {
        base,
        path,
        file,
        len,
        index: Vec::new(),
    };
    if len < SEGMENT_HEADER {
        return Err(corrupt(
            id,
            base,
            &seg.path,
            "sealed segment is shorter than its header",
        ));
    }
    check_header(id, &seg)?;
    seg.index = load_index(fs, dir, base, len, max_rel).entries;
    let trusted = match seg.index.last() {
        None => true,
        // The final sync mark: the end of the segment, where the next segment's offsets start.
        Some(&e) if u64::from(e.pos) == len => max_rel == Some(u64::from(e.rel)),
        Some(&e) => entry_matches(&seg, e, max_read),
    };
    let expected_index = len.saturating_sub(SEGMENT_HEADER) >= 2 * u64::from(index_interval_bytes);
    if !trusted || (seg.index.is_empty() && expected_index) {
        // A missing or stale index: rebuild it from the segment.
        seg.index.clear();
        let end = scan_frames(
            &mut seg,
            SEGMENT_HEADER,
            base,
            len,
            max_read,
            index_interval_bytes,
        )
        .map_err(|e| Error::io("read segment", &seg.path, e))?;
        if let Some(reason) = end.bad {
            return Err(corrupt(id, end.next_offset, &seg.path, reason));
        }
        let end_rel = end.next_offset - base;
        if max_rel == Some(end_rel) {
            let mark = IndexEntry {
                rel: end_rel as u32,
                pos: end.pos as u32,
            };
            push_entry(&mut seg.index, mark);
        }
        write_index(fs, dir, base, &seg.index)?;
        tracing::warn!(partition = %id, base, "rebuilt a missing or stale segment index");
    }
    Ok(seg)
}

/// The base offsets of the segment files in a partition directory (`<20 digits>.log`), in
/// no particular order.
pub(super) fn segment_bases(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = fs
        .list(dir)
        .map_err(|e| Error::io("list partition directory", dir, e))?;
    for entry in entries {
        let name = entry.file_name().unwrap_or_default().to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if stem.len() == 20 {
                if let Ok(base) = stem.parse::<u64>() {
                    bases.push(base);
                }
            }
        }
    }
    Ok(bases)
}

/// Drops index entries from the end until the last one is a mark at the end of the file or
/// points at its frame (the scan of a recovery starts there). True if any was dropped.
fn trim_index(seg: &mut Segment, file_len: u64, max_read: u32) -> bool {
    let mut dropped = false;
    while let Some(&last) = seg.index.last() {
        if u64::from(last.pos) == file_len || entry_matches(seg, last, max_read) {
            break;
        }
        seg.index.pop();
        dropped = true;
    }
    dropped
}

/// After the scan of a recovery: truncates a torn tail, and makes the recovered tail durable
/// (it is served from now on) before the index names it, as a sync would.
fn repair_tail(
    id: PartitionId,
    seg: &mut Segment,
    end: &ScanEnd,
    file_len: u64,
    start_pos: u64,
) -> Result<()> {
    if let Some(reason) = &end.bad {
        tracing::warn!(
            partition = %id,
            offset = end.next_offset,
            dropped_bytes = file_len - end.pos,
            reason = %reason,
            "truncating a torn tail of the log"
        );
        seg.file
            .set_len(end.pos)
            .map_err(|e| Error::io("truncate torn tail of", &seg.path, e))?;
    }
    seg.len = end.pos;
    if end.bad.is_some() || end.pos > start_pos {
        seg.file
            .sync()
            .map_err(|e| Error::io("fsync segment", &seg.path, e))?;
    }
    Ok(())
}

/// Opens a segment file for reading and writing, with its length.
fn open_segment_rw(fs: &dyn FileSystem, path: &Path) -> Result<(Arc<dyn FileHandle>, u64)> {
    let file = fs
        .open(path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open segment", path, e))?;
    let len = file.len().map_err(|e| Error::io("stat segment", path, e))?;
    Ok((file, len))
}

/// Adds the index's mark at the recovered end of a segment holding records; returns the bytes
/// written since the last index entry (0 when the mark was added).
fn mark_end(seg: &mut Segment, end: &ScanEnd) -> u64 {
    if end.pos > SEGMENT_HEADER {
        let mark = IndexEntry {
            rel: (end.next_offset - seg.base) as u32,
            pos: end.pos as u32,
        };
        if push_entry(&mut seg.index, mark) {
            return 0;
        }
    }
    end.bytes_since_index
}

/// Opens the active segment and recovers its tail (see the module documentation). Returns it
/// with the partition's end offset and the index byte counter. On return the index file holds
/// exactly the segment's in-memory index.
pub(super) fn recover_active(
    fs: &dyn FileSystem,
    id: PartitionId,
    dir: &Path,
    base: u64,
    max_read: u32,
    index_interval_bytes: u32,
) -> Result<(Segment, u64, u64)> {
    let path = segment_path(dir, base);
    let (file, file_len) = open_segment_rw(fs, &path)?;
    let LoadedIndex {
        entries,
        beyond,
        clean,
    } = load_index(fs, dir, base, file_len, None);
    let no_synced_data = entries.is_empty() && beyond.is_none();
    if no_synced_data && header_torn(file.as_ref(), &path, file_len)? {
        // The crash came while the segment was being created, before any record: its header
        // never reached the disk.
        drop(file);
        tracing::warn!(partition = %id, base, file_len, "recreating a segment whose header was torn");
        let seg = create_segment(fs, dir, base)?;
        write_index(fs, dir, base, &[])?;
        return Ok((seg, base, 0));
    }
    if file_len < SEGMENT_HEADER {
        let why = format!("the segment is {file_len} bytes, shorter than its header, but its index names synced data");
        return Err(corrupt(id, base, &path, why));
    }
    let mut seg = Segment {
        base,
        path,
        file,
        len: file_len,
        index: Vec::new(),
    };
    check_header(id, &seg)?;
    // Every index entry was written after the data before its position was fsynced.
    let durable_end = beyond
        .or_else(|| entries.last().copied())
        .map_or(SEGMENT_HEADER, |e| u64::from(e.pos));
    let loaded = entries.len();
    seg.index = entries;
    let dropped_entries = trim_index(&mut seg, file_len, max_read);
    let (start_pos, start_offset) = match seg.index.last() {
        Some(e) => (u64::from(e.pos), base + u64::from(e.rel)),
        None => (SEGMENT_HEADER, base),
    };
    let end = scan_frames(
        &mut seg,
        start_pos,
        start_offset,
        file_len,
        max_read,
        index_interval_bytes,
    )
    .map_err(|e| Error::io("read segment", &seg.path, e))?;
    if end.pos < durable_end {
        // Not a torn write: the data here was fsynced before an index entry named it.
        let what = end
            .bad
            .unwrap_or_else(|| format!("the segment ends at byte {}", end.pos));
        return Err(corrupt(
            id,
            end.next_offset,
            &seg.path,
            format!("{what}, before byte {durable_end}, up to which the index shows synced data"),
        ));
    }
    repair_tail(id, &mut seg, &end, file_len, start_pos)?;
    let bytes_since_index = mark_end(&mut seg, &end);
    if !clean || dropped_entries || seg.index.len() != loaded {
        write_index(fs, dir, base, &seg.index)?;
    }
    Ok((seg, end.next_offset, bytes_since_index))
}
