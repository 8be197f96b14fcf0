//! [`inspect_log`]: a read-only look at a [`FileLog`](super::FileLog)'s directory for tools
//! (the `snapflow log` commands): partitions, segments, offsets and bytes, and every frame that
//! fails its checks, with its file and position. Unlike opening the log, nothing is repaired:
//! a torn tail stays on the disk and is reported (as recoverable when it lies after what the
//! newest segment's index says was synced: the next open truncates it).

use std::path::{Path, PathBuf};

use super::index::load_index;
use super::layout::SEGMENT_HEADER;
use super::meta::{read_meta, META_FILE};
use super::reader::{FrameReader, Next};
use super::recovery::segment_bases;
use super::segment::{check_header, segment_path, Segment};
use crate::error::{Error, Result};
use crate::log::frame::FRAME_HEADER;
use crate::log::PartitionId;
use crate::storage::{FileSystem, OpenMode, StdFs};

/// One segment file of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The file.
    pub file: PathBuf,
    /// The offset of its first record.
    pub base: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    /// Records that pass their checks.
    pub records: u64,
    /// The offset after its last valid record.
    pub end: u64,
}

/// A frame (or file) that fails its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogProblem {
    /// The file.
    pub file: PathBuf,
    /// The byte position in it.
    pub position: u64,
    /// What failed.
    pub reason: String,
    /// True for a torn end of the newest segment of a partition: what a crash during an
    /// append leaves, and what the next open truncates. Anything else is corruption.
    pub recoverable: bool,
}

/// One partition of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition.
    pub id: PartitionId,
    /// Its segments, oldest first.
    pub segments: Vec<SegmentInfo>,
}

impl PartitionInfo {
    /// The first offset still held (after retention), if any segment is there.
    pub fn start(&self) -> Option<u64> {
        self.segments.first().map(|s| s.base)
    }

    /// The offset after the last valid record.
    pub fn end(&self) -> Option<u64> {
        self.segments.last().map(|s| s.end)
    }
}

/// What [`inspect_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInfo {
    /// The log's directory.
    pub dir: PathBuf,
    /// Every partition, in order.
    pub partitions: Vec<PartitionInfo>,
    /// Every problem found.
    pub problems: Vec<LogProblem>,
}

/// Reads the log in `dir` without changing anything: its `log.meta`, every partition's
/// segments and every frame's length, checksum and offset. A missing or unreadable
/// `log.meta` is an error (the directory is not a log); problems in segments are reported in
/// [`LogInfo::problems`].
pub fn inspect_log(dir: impl AsRef<Path>) -> Result<LogInfo> {
    let dir = dir.as_ref().to_path_buf();
    let fs = StdFs;
    let meta_path = dir.join(META_FILE);
    if fs.file_len(&meta_path).is_err() {
        return Err(Error::Config(format!(
            "{} is not a snapflow log: it has no {META_FILE}",
            dir.display()
        )));
    }
    let meta = read_meta(&fs, &meta_path)?;
    let max_record = meta.max_record_bytes.unwrap_or(u32::MAX);
    let mut info = LogInfo {
        dir: dir.clone(),
        partitions: Vec::new(),
        problems: Vec::new(),
    };
    for p in 0..meta.partitions {
        let pdir = dir.join(format!("p-{p:05}"));
        let mut bases = if fs.is_dir(&pdir) {
            segment_bases(&fs, &pdir)?
        } else {
            Vec::new()
        };
        bases.sort_unstable();
        let mut part = PartitionInfo {
            id: PartitionId(p),
            segments: Vec::new(),
        };
        for (i, base) in bases.iter().enumerate() {
            let newest = i + 1 == bases.len();
            let seg = inspect_segment(&fs, PartitionId(p), &pdir, *base, newest, max_record);
            let (seg, problems) = seg?;
            part.segments.push(seg);
            info.problems.extend(problems);
        }
        info.partitions.push(part);
    }
    Ok(info)
}

/// Up to where a segment of `bytes` bytes is known synced: what the newest segment's index
/// says (a crash tears only what came after), all of an older (sealed) one.
fn synced_until(fs: &dyn FileSystem, pdir: &Path, base: u64, bytes: u64, newest: bool) -> u64 {
    if !newest {
        return bytes;
    }
    load_index(fs, pdir, base, bytes, None)
        .entries
        .last()
        .map_or(SEGMENT_HEADER, |e| u64::from(e.pos))
}

fn inspect_segment(
    fs: &dyn FileSystem,
    id: PartitionId,
    pdir: &Path,
    base: u64,
    newest: bool,
    max_record: u32,
) -> Result<(SegmentInfo, Vec<LogProblem>)> {
    let path = segment_path(pdir, base);
    let file = fs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let bytes = file
        .len()
        .map_err(|e| Error::io("stat segment", &path, e))?;
    let mut info = SegmentInfo {
        file: path.clone(),
        base,
        bytes,
        records: 0,
        end: base,
    };
    let problem = |position: u64, reason: String, recoverable: bool| LogProblem {
        file: path.clone(),
        position,
        reason,
        recoverable,
    };
    let seg = Segment {
        base,
        path: path.clone(),
        file: std::sync::Arc::clone(&file),
        len: bytes,
        index: Vec::new(),
    };
    if bytes < SEGMENT_HEADER {
        return Ok((
            info,
            vec![problem(0, "shorter than its header".into(), newest)],
        ));
    }
    if let Err(e) = check_header(id, &seg) {
        return Ok((info, vec![problem(0, e.to_string(), false)]));
    }
    let synced = synced_until(fs, pdir, base, bytes, newest);
    let mut reader = FrameReader::new(file.as_ref(), SEGMENT_HEADER, bytes, max_record);
    let mut problems = Vec::new();
    let mut at = SEGMENT_HEADER;
    loop {
        match reader
            .next()
            .map_err(|e| Error::io("read segment", &path, e))?
        {
            Next::End => break,
            Next::Frame {
                pos, offset, len, ..
            } => {
                if offset < info.end {
                    problems.push(problem(
                        pos,
                        format!("offset {offset} after offset {}", info.end),
                        false,
                    ));
                    break;
                }
                info.records += 1;
                info.end = offset + 1;
                at = pos + (FRAME_HEADER + len) as u64;
            }
            Next::Bad { reason } => {
                // A bad frame ends what can be read of the segment: only the newest segment's
                // unsynced end can be torn by a crash.
                problems.push(problem(at, reason, newest && at >= synced));
                break;
            }
        }
    }
    Ok((info, problems))
}
