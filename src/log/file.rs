//! [`FileLog`]: the embedded, file-backed [`ReplayableLog`].
//!
//! Layout under the log's directory:
//! ```text
//! log.meta                      envelope(msgpack {version, partitions}), written atomically
//! p-00000/
//!   00000000000000000000.log    segment: "SNAPSEG1" + base offset (u64le), then frames
//!   00000000000000000000.idx    sparse index: (offset - base: u32le, position: u32le) entries
//!   00000000000000052311.log    next segment, named by its base offset
//! ```
//! Only the newest segment of a partition (the *active* one) is appended to. It is rolled when
//! the next frame would make it larger than [`FileLogOptions::segment_bytes`]: the old segment
//! is fsynced before the new one is created, so every sealed segment is durable and whole.
//!
//! The index holds one entry per [`FileLogOptions::index_interval_bytes`] of frames. It is a
//! cache: entries are checked against the offsets stored in the frames they point at, and a
//! missing or stale index is rebuilt from its segment. Seeking reads at most one index interval
//! of frames before the first record asked for; opening reads only the tail of the active
//! segment after its last index entry.
//!
//! Recovery on open: the tail of the active segment is scanned. At the first frame that is
//! incomplete or fails its checksum, the rest of the segment is searched for any valid frame.
//! If there is none, the bad bytes are a torn write: the segment is truncated back to the last
//! valid record (logged with the number of bytes dropped). If there is one, the log holds
//! valid records after a corrupt one, and open fails with [`Error::LogCorrupt`] naming the
//! partition and offset: nothing is skipped silently. Reads check every frame's checksum and
//! offset, so corruption in older data is reported when it is read, never returned as data.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::frame::{check_frame, encode_frame, FrameCheck, FRAME_HEADER};
use super::{
    check_partition, Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog,
};
use crate::error::{Error, Result};
use crate::storage;

const SEGMENT_MAGIC: &[u8; 8] = b"SNAPSEG1";
const SEGMENT_HEADER: u64 = 16;
const META_MAGIC: &[u8; 8] = b"SNAPLOGM";
const META_FILE: &str = "log.meta";
const INDEX_ENTRY: usize = 8;
const READ_CHUNK: usize = 256 * 1024;
/// The largest segment size accepted: index positions are u32.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// When a [`FileLog`] fsyncs appended records, and so what a power failure can lose.
/// (A process crash loses nothing that `append` returned for, under any policy: the bytes are
/// in the operating system's page cache.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before every `append`/`append_batch` returns. A power failure loses nothing that
    /// was acknowledged. Slowest: one fsync per call.
    EveryAppend,
    /// fsync during an append once `every` has passed or `max_records` records are unsynced,
    /// whichever comes first, and on [`ReplayableLog::sync`] and drop. A power failure can lose
    /// the records appended since the last sync: at most `every` worth while appends keep
    /// arriving, and everything unsynced if appends stop and nobody calls `sync` (the
    /// [`LogWriter`](super::LogWriter) actor calls it on a timer).
    Interval {
        /// The longest time between syncs while appends arrive.
        every: Duration,
        /// The most records left unsynced.
        max_records: u64,
    },
    /// Never fsync on append; leave write-back to the operating system (and to explicit
    /// `sync` calls). A power failure can lose any amount of recent data, and, since the
    /// operating system may write pages out of order, can leave a record that was lost in front
    /// of one that survived, which the next open reports as corruption.
    Os,
}

/// Settings of a [`FileLog`].
#[derive(Debug, Clone)]
pub struct FileLogOptions {
    /// Number of partitions of a new log. Opening an existing log with another count fails.
    pub partitions: u32,
    /// Roll the active segment when it would grow past this many bytes (at most 1 GiB).
    pub segment_bytes: u64,
    /// Largest record payload accepted on append, and the largest length field trusted on read.
    pub max_record_bytes: u32,
    /// One index entry per this many bytes of frames.
    pub index_interval_bytes: u32,
    /// Stop filling a read batch once it holds this many payload bytes (a batch always holds at
    /// least one record when one is available).
    pub read_batch_bytes: usize,
    /// When appends are fsynced.
    pub sync: SyncPolicy,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions {
            partitions: 1,
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            index_interval_bytes: 4096,
            read_batch_bytes: 4 << 20,
            sync: SyncPolicy::Interval {
                every: Duration::from_millis(10),
                max_records: 100_000,
            },
        }
    }
}

impl FileLogOptions {
    /// Default options with `partitions` partitions.
    pub fn with_partitions(partitions: u32) -> Self {
        FileLogOptions {
            partitions,
            ..FileLogOptions::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > 65_536 {
            return Err(Error::Config(format!(
                "a log needs 1 to 65536 partitions, not {}",
                self.partitions
            )));
        }
        if self.segment_bytes < 64 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(Error::Config(format!(
                "segment_bytes must be between 64 and {MAX_SEGMENT_BYTES}, not {}",
                self.segment_bytes
            )));
        }
        if self.max_record_bytes == 0
            || u64::from(self.max_record_bytes) + SEGMENT_HEADER + FRAME_HEADER as u64
                > MAX_SEGMENT_BYTES
        {
            return Err(Error::Config(format!(
                "max_record_bytes must be between 1 and about 1 GiB, not {}",
                self.max_record_bytes
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(Error::Config("index_interval_bytes must be above 0".into()));
        }
        if let SyncPolicy::Interval { max_records: 0, .. } = self.sync {
            return Err(Error::Config(
                "SyncPolicy::Interval needs max_records above 0".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LogMeta {
    version: u32,
    partitions: u32,
}

/// The file-backed [`ReplayableLog`]. See the module documentation for the format and the
/// recovery rules.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    opts: FileLogOptions,
    parts: Vec<Mutex<Partition>>,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    rel: u32,
    pos: u32,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
    /// Bytes of valid data, header included.
    len: u64,
    index: Vec<IndexEntry>,
}

impl Segment {
    /// The index entry to start a scan for `offset` from: (position, offset at it).
    fn seek_point(&self, offset: u64) -> (u64, u64) {
        let rel = offset - self.base;
        let i = self.index.partition_point(|e| u64::from(e.rel) <= rel);
        if i == 0 {
            (SEGMENT_HEADER, self.base)
        } else {
            let e = self.index[i - 1];
            (u64::from(e.pos), self.base + u64::from(e.rel))
        }
    }
}

#[derive(Debug)]
struct Partition {
    id: PartitionId,
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// The offset the next record gets.
    end: u64,
    index_file: File,
    index_file_len: u64,
    bytes_since_index: u64,
    poisoned: Option<String>,
    unsynced: u64,
    last_sync: Instant,
    buf: Vec<u8>,
    index_buf: Vec<u8>,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

fn corrupt(partition: PartitionId, offset: u64, path: &Path, reason: impl Into<String>) -> Error {
    Error::LogCorrupt {
        partition,
        offset: LogOffset(offset),
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads frames sequentially from a file region through a reusable buffer.
struct FrameReader<'a> {
    file: &'a File,
    pos: u64,
    limit: u64,
    buf: Vec<u8>,
    buf_start: u64,
    max_record: u32,
}

enum Next {
    End,
    Frame {
        pos: u64,
        offset: u64,
        start: usize,
        len: usize,
    },
    Bad {
        reason: String,
    },
}

impl<'a> FrameReader<'a> {
    fn new(file: &'a File, pos: u64, limit: u64, max_record: u32) -> Self {
        FrameReader {
            file,
            pos,
            limit,
            buf: Vec::new(),
            buf_start: pos,
            max_record,
        }
    }

    fn payload(&self, start: usize, len: usize) -> &[u8] {
        &self.buf[start..start + len]
    }

    fn next(&mut self) -> std::io::Result<Next> {
        loop {
            if self.pos >= self.limit {
                return Ok(Next::End);
            }
            let in_buf = (self.pos - self.buf_start) as usize;
            let avail = if in_buf <= self.buf.len() {
                &self.buf[in_buf..]
            } else {
                &[][..]
            };
            match check_frame(avail, self.max_record) {
                FrameCheck::Valid { offset, len } => {
                    let pos = self.pos;
                    self.pos += (FRAME_HEADER + len) as u64;
                    return Ok(Next::Frame {
                        pos,
                        offset,
                        start: in_buf + FRAME_HEADER,
                        len,
                    });
                }
                FrameCheck::Incomplete { needed } => {
                    let need = needed.unwrap_or(FRAME_HEADER) as u64;
                    let left = self.limit - self.pos;
                    if need > left {
                        return Ok(Next::Bad {
                            reason: format!(
                                "incomplete frame: needs {need} bytes, {left} remain in the segment"
                            ),
                        });
                    }
                    if (avail.len() as u64) >= need {
                        // Cannot happen: check_frame asked for more than is buffered.
                        return Ok(Next::Bad {
                            reason: "frame check inconsistent".into(),
                        });
                    }
                    let n = need.max(READ_CHUNK as u64).min(left) as usize;
                    self.buf.clear();
                    self.buf.resize(n, 0);
                    self.buf_start = self.pos;
                    if let Err(e) = self.file.read_exact_at(&mut self.buf, self.pos) {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            self.buf.clear();
                            return Ok(Next::Bad {
                                reason: "the segment file is shorter than expected".into(),
                            });
                        }
                        return Err(e);
                    }
                }
                FrameCheck::TooLarge { len } => {
                    return Ok(Next::Bad {
                        reason: format!(
                            "length field {len} exceeds the maximum record size {}",
                            self.max_record
                        ),
                    })
                }
                FrameCheck::BadChecksum => {
                    return Ok(Next::Bad {
                        reason: "checksum mismatch".into(),
                    })
                }
            }
        }
    }
}

impl FileLog {
    /// Opens the log in `dir`, creating it with `opts.partitions` partitions if it does not
    /// exist. Recovers every partition as the module documentation describes.
    pub fn open(dir: impl AsRef<Path>, opts: FileLogOptions) -> Result<FileLog> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        storage::create_dir_durable(&dir)?;
        let meta_path = dir.join(META_FILE);
        let partitions = if meta_path.exists() {
            let bytes = match storage::read_bounded(&meta_path, 4096)? {
                Ok(b) => b,
                Err(reason) => {
                    return Err(Error::Config(format!("{}: {reason}", meta_path.display())))
                }
            };
            let payload = storage::decode_envelope(META_MAGIC, &bytes, 4096).map_err(|reason| {
                Error::Config(format!(
                    "{} is not a valid log meta file: {reason}",
                    meta_path.display()
                ))
            })?;
            let meta: LogMeta = super::codec::decode(payload, "log meta file")?;
            if meta.version != 1 {
                return Err(Error::Config(format!(
                    "{}: unsupported log format version {}",
                    meta_path.display(),
                    meta.version
                )));
            }
            if meta.partitions != opts.partitions {
                return Err(Error::Config(format!(
                    "the log in {} has {} partitions, not the {} asked for",
                    dir.display(),
                    meta.partitions,
                    opts.partitions
                )));
            }
            meta.partitions
        } else {
            let meta = LogMeta {
                version: 1,
                partitions: opts.partitions,
            };
            let payload = super::codec::encode_named(&meta, "log meta file")?;
            storage::write_atomic(&meta_path, &storage::encode_envelope(META_MAGIC, &payload))?;
            opts.partitions
        };
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let pdir = dir.join(format!("p-{p:05}"));
            parts.push(Mutex::new(Partition::open(PartitionId(p), pdir, &opts)?));
        }
        Ok(FileLog { dir, opts, parts })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &FileLogOptions {
        &self.opts
    }

    fn part(&self, partition: PartitionId) -> Result<MutexGuard<'_, Partition>> {
        let i = check_partition(partition, self.parts.len() as u32)?;
        // A panic while holding the lock can only come from a bug in this module; the
        // partition's own poisoned flag guards the data, so recover the guard.
        Ok(self.parts[i].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Partition {
    fn open(id: PartitionId, dir: PathBuf, opts: &FileLogOptions) -> Result<Partition> {
        storage::create_dir_durable(&dir)?;
        let mut bases = Vec::new();
        for entry in
            fs::read_dir(&dir).map_err(|e| Error::io("list partition directory", &dir, e))?
        {
            let entry = entry.map_err(|e| Error::io("list partition directory", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log") {
                if stem.len() == 20 {
                    if let Ok(base) = stem.parse::<u64>() {
                        bases.push(base);
                    }
                }
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            create_segment(&dir, 0)?;
            bases.push(0);
        }
        let mut segments = BTreeMap::new();
        let last = bases.len() - 1;
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            let seg = if i == last {
                None
            } else {
                Some(open_sealed(id, &dir, base, next_base, opts)?)
            };
            if let Some(seg) = seg {
                segments.insert(base, seg);
            }
        }
        let active_base = bases[last];
        let (active, end, bytes_since_index) = recover_active(id, &dir, active_base, opts)?;
        segments.insert(active_base, active);
        let ipath = index_path(&dir, active_base);
        let index_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&ipath)
            .map_err(|e| Error::io("open index", &ipath, e))?;
        let index_file_len = index_file
            .metadata()
            .map_err(|e| Error::io("stat index", &ipath, e))?
            .len();
        Ok(Partition {
            id,
            dir,
            segments,
            end,
            index_file,
            index_file_len,
            bytes_since_index,
            poisoned: None,
            unsynced: 0,
            last_sync: Instant::now(),
            buf: Vec::new(),
            index_buf: Vec::new(),
        })
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a partition always has an active segment")
    }

    fn start(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(self.end)
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(Error::Poisoned {
                what: format!("log partition {}", self.id),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn append(&mut self, records: &[&[u8]], opts: &FileLogOptions) -> Result<OffsetRange> {
        self.check_poisoned()?;
        for r in records {
            if r.len() as u64 > u64::from(opts.max_record_bytes) {
                return Err(Error::RecordTooLarge {
                    partition: self.id,
                    len: r.len() as u64,
                    max: u64::from(opts.max_record_bytes),
                });
            }
        }
        let start = self.end;
        if let Err(e) = self.write_records(records, opts) {
            tracing::error!(partition = %self.id, error = %e, "log append failed; partition refuses further writes");
            self.poisoned = Some(e.to_string());
            return Err(e);
        }
        self.unsynced += records.len() as u64;
        let due = match opts.sync {
            SyncPolicy::EveryAppend => true,
            SyncPolicy::Interval { every, max_records } => {
                self.unsynced >= max_records || self.last_sync.elapsed() >= every
            }
            SyncPolicy::Os => false,
        };
        if due {
            self.sync()?;
        }
        Ok(OffsetRange {
            start: LogOffset(start),
            end: LogOffset(self.end),
        })
    }

    fn write_records(&mut self, records: &[&[u8]], opts: &FileLogOptions) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut index_buf = std::mem::take(&mut self.index_buf);
        buf.clear();
        index_buf.clear();
        let mut end = self.end;
        let mut seg_len = self.active().len;
        let result = (|| {
            for r in records {
                let frame_len = (FRAME_HEADER + r.len()) as u64;
                if seg_len > SEGMENT_HEADER && seg_len + frame_len > opts.segment_bytes {
                    self.flush_buffers(&buf, &index_buf, seg_len)?;
                    buf.clear();
                    index_buf.clear();
                    self.end = end;
                    self.roll()?;
                    seg_len = SEGMENT_HEADER;
                }
                if self.bytes_since_index >= u64::from(opts.index_interval_bytes) {
                    let base = self.active().base;
                    let entry = IndexEntry {
                        rel: (end - base) as u32,
                        pos: seg_len as u32,
                    };
                    self.active().index.push(entry);
                    index_buf.extend_from_slice(&entry.rel.to_le_bytes());
                    index_buf.extend_from_slice(&entry.pos.to_le_bytes());
                    self.bytes_since_index = 0;
                }
                encode_frame(&mut buf, end, r);
                end += 1;
                seg_len += frame_len;
                self.bytes_since_index += frame_len;
            }
            self.flush_buffers(&buf, &index_buf, seg_len)?;
            self.end = end;
            Ok(())
        })();
        self.buf = buf;
        self.index_buf = index_buf;
        result
    }

    /// Writes buffered frames at the end of the active segment and index entries at the end of
    /// the index file, then records the segment's new length.
    fn flush_buffers(&mut self, buf: &[u8], index_buf: &[u8], new_len: u64) -> Result<()> {
        let index_at = self.index_file_len;
        let seg = self.active();
        let at = seg.len;
        if !buf.is_empty() {
            seg.file
                .write_all_at(buf, at)
                .map_err(|e| Error::io("write segment", &seg.path, e))?;
        }
        seg.len = new_len;
        if !index_buf.is_empty() {
            let base = self.active().base;
            let ipath = index_path(&self.dir, base);
            self.index_file
                .write_all_at(index_buf, index_at)
                .map_err(|e| Error::io("write index", &ipath, e))?;
            self.index_file_len += index_buf.len() as u64;
        }
        Ok(())
    }

    /// Seals the active segment (fsync) and starts a new one at the current end offset.
    fn roll(&mut self) -> Result<()> {
        self.sync()?;
        let base = self.end;
        let seg = create_segment(&self.dir, base)?;
        let ipath = index_path(&self.dir, base);
        self.index_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&ipath)
            .map_err(|e| Error::io("create index", &ipath, e))?;
        self.index_file_len = 0;
        self.bytes_since_index = 0;
        storage::sync_dir(&self.dir)?;
        self.segments.insert(base, seg);
        tracing::debug!(partition = %self.id, base, "rolled log segment");
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.check_poisoned()?;
        let result = (|| {
            let seg = self.active();
            seg.file
                .sync_data()
                .map_err(|e| Error::io("fsync segment", &seg.path, e))?;
            let base = self.active().base;
            let ipath = index_path(&self.dir, base);
            self.index_file
                .sync_data()
                .map_err(|e| Error::io("fsync index", &ipath, e))
        })();
        match result {
            Ok(()) => {
                self.unsynced = 0;
                self.last_sync = Instant::now();
                Ok(())
            }
            Err(e) => {
                // After a failed fsync the kernel may have dropped the dirty pages: nothing
                // written since the last good sync can be trusted, so refuse further writes.
                tracing::error!(partition = %self.id, error = %e, "log fsync failed; partition refuses further writes");
                self.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn read(&self, from: u64, max_records: usize, opts: &FileLogOptions) -> Result<RecordBatch> {
        let start = self.start();
        if from < start || from > self.end {
            return Err(Error::OffsetOutOfRange {
                partition: self.id,
                offset: LogOffset(from),
                start: LogOffset(start),
                end: LogOffset(self.end),
            });
        }
        let mut batch = RecordBatch::new(self.id, LogOffset(from));
        if from == self.end || max_records == 0 {
            return Ok(batch);
        }
        let first_base = self
            .segments
            .range(..=from)
            .next_back()
            .map(|(b, _)| *b)
            .unwrap_or(start);
        let mut segs = self.segments.range(first_base..).peekable();
        let mut target = from;
        while let Some((_, seg)) = segs.next() {
            let seg_end = segs.peek().map(|(b, _)| **b).unwrap_or(self.end);
            let (pos, mut expect) = seg.seek_point(target);
            let mut reader = FrameReader::new(&seg.file, pos, seg.len, opts.max_record_bytes);
            loop {
                match reader
                    .next()
                    .map_err(|e| Error::io("read segment", &seg.path, e))?
                {
                    Next::End => break,
                    Next::Bad { reason, .. } => {
                        return Err(corrupt(self.id, expect, &seg.path, reason));
                    }
                    Next::Frame {
                        offset, start, len, ..
                    } => {
                        if offset != expect {
                            return Err(corrupt(
                                self.id,
                                expect,
                                &seg.path,
                                format!(
                                    "found the record of offset {offset} where {expect} belongs"
                                ),
                            ));
                        }
                        if offset >= target {
                            batch.push(reader.payload(start, len));
                            if batch.len() >= max_records
                                || batch.data_len() >= opts.read_batch_bytes
                            {
                                return Ok(batch);
                            }
                        }
                        expect += 1;
                    }
                }
            }
            if expect != seg_end {
                return Err(corrupt(
                    self.id,
                    expect,
                    &seg.path,
                    format!(
                        "segment ends at offset {expect} but the next data starts at {seg_end}"
                    ),
                ));
            }
            target = expect;
            if target >= self.end {
                break;
            }
        }
        Ok(batch)
    }

    fn truncate_before(&mut self, offset: u64) -> Result<u64> {
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for w in bases.windows(2) {
            let (base, next) = (w[0], w[1]);
            if next > offset {
                break;
            }
            if let Some(seg) = self.segments.remove(&base) {
                fs::remove_file(&seg.path)
                    .map_err(|e| Error::io("remove segment", &seg.path, e))?;
                let ipath = index_path(&self.dir, base);
                match fs::remove_file(&ipath) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove index", &ipath, e)),
                }
                removed = true;
            }
        }
        if removed {
            storage::sync_dir(&self.dir)?;
            tracing::info!(partition = %self.id, start = self.start(), "log retention removed segments");
        }
        Ok(self.start())
    }
}

/// Creates an empty segment file with its header, fsynced.
fn create_segment(dir: &Path, base: u64) -> Result<Segment> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::io("create segment", &path, e))?;
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..].copy_from_slice(&base.to_le_bytes());
    file.write_all_at(&header, 0)
        .map_err(|e| Error::io("write segment header", &path, e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync segment", &path, e))?;
    storage::sync_dir(dir)?;
    Ok(Segment {
        base,
        path,
        file,
        len: SEGMENT_HEADER,
        index: Vec::new(),
    })
}

fn check_header(id: PartitionId, seg: &Segment) -> Result<()> {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    seg.file
        .read_exact_at(&mut header, 0)
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

/// Loads the index file of a segment, keeping the longest prefix of plausible entries
/// (strictly increasing, inside the segment). Entries are verified again on use.
fn load_index(dir: &Path, base: u64, seg_len: u64, max_rel: Option<u64>) -> Vec<IndexEntry> {
    let ipath = index_path(dir, base);
    let bytes = fs::read(&ipath).unwrap_or_default();
    let mut out: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY);
    for chunk in bytes.chunks_exact(INDEX_ENTRY) {
        let rel = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let pos = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let plausible = u64::from(pos) >= SEGMENT_HEADER
            && u64::from(pos) < seg_len
            && max_rel.is_none_or(|m| u64::from(rel) < m)
            && out
                .last()
                .is_none_or(|last| rel > last.rel && pos > last.pos);
        if !plausible {
            break;
        }
        out.push(IndexEntry { rel, pos });
    }
    out
}

/// True when the frame at `entry` stores the offset the entry claims.
fn entry_matches(seg: &Segment, entry: IndexEntry, max_record: u32) -> bool {
    let mut r = FrameReader::new(&seg.file, u64::from(entry.pos), seg.len, max_record);
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
    opts: &FileLogOptions,
) -> std::io::Result<ScanEnd> {
    let mut reader = FrameReader::new(&seg.file, pos, limit, opts.max_record_bytes);
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
                if since >= u64::from(opts.index_interval_bytes) {
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
    seg.index.extend(new_entries);
    Ok(ScanEnd {
        pos: end_pos,
        next_offset: expect,
        bytes_since_index: since,
        bad,
    })
}

fn write_index(dir: &Path, base: u64, index: &[IndexEntry]) -> Result<()> {
    let mut bytes = Vec::with_capacity(index.len() * INDEX_ENTRY);
    for e in index {
        bytes.extend_from_slice(&e.rel.to_le_bytes());
        bytes.extend_from_slice(&e.pos.to_le_bytes());
    }
    storage::write_atomic(&index_path(dir, base), &bytes)
}

fn open_sealed(
    id: PartitionId,
    dir: &Path,
    base: u64,
    next_base: Option<u64>,
    opts: &FileLogOptions,
) -> Result<Segment> {
    let path = segment_path(dir, base);
    let file = File::open(&path).map_err(|e| Error::io("open segment", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat segment", &path, e))?
        .len();
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
    seg.index = load_index(dir, base, len, max_rel);
    let trusted = seg
        .index
        .last()
        .is_none_or(|&e| entry_matches(&seg, e, opts.max_record_bytes));
    let expected_index =
        len.saturating_sub(SEGMENT_HEADER) >= 2 * u64::from(opts.index_interval_bytes);
    if !trusted || (seg.index.is_empty() && expected_index) {
        // A missing or stale index: rebuild it from the segment.
        seg.index.clear();
        let end = scan_frames(&mut seg, SEGMENT_HEADER, base, len, opts)
            .map_err(|e| Error::io("read segment", &seg.path, e))?;
        if let Some(reason) = end.bad {
            return Err(corrupt(id, end.next_offset, &seg.path, reason));
        }
        write_index(dir, base, &seg.index)?;
        tracing::warn!(partition = %id, base, "rebuilt a missing or stale segment index");
    }
    Ok(seg)
}

/// True when any position in `[from, to)` of the file starts a valid frame.
fn valid_frame_after(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    max_record: u32,
) -> Result<bool> {
    if from >= to {
        return Ok(false);
    }
    let mut data = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut data, from)
        .map_err(|e| Error::io("read segment tail", path, e))?;
    Ok((0..data.len()).any(|i| {
        matches!(
            check_frame(&data[i..], max_record),
            FrameCheck::Valid { .. }
        )
    }))
}

/// Opens the active segment and recovers its tail. Returns it with the partition's end offset
/// and the index byte counter.
fn recover_active(
    id: PartitionId,
    dir: &Path,
    base: u64,
    opts: &FileLogOptions,
) -> Result<(Segment, u64, u64)> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("stat segment", &path, e))?
        .len();
    if file_len < SEGMENT_HEADER {
        // The crash came while the segment was being created, before any record.
        drop(file);
        tracing::warn!(partition = %id, base, "recreating a segment whose header was torn");
        let seg = create_segment(dir, base)?;
        write_index(dir, base, &[])?;
        return Ok((seg, base, 0));
    }
    let mut seg = Segment {
        base,
        path,
        file,
        len: file_len,
        index: Vec::new(),
    };
    check_header(id, &seg)?;
    seg.index = load_index(dir, base, file_len, None);
    while let Some(&last) = seg.index.last() {
        if entry_matches(&seg, last, opts.max_record_bytes) {
            break;
        }
        seg.index.pop();
    }
    let (pos, offset) = match seg.index.last() {
        Some(e) => (u64::from(e.pos), base + u64::from(e.rel)),
        None => (SEGMENT_HEADER, base),
    };
    let mut end = scan_frames(&mut seg, pos, offset, file_len, opts)
        .map_err(|e| Error::io("read segment", &seg.path, e))?;
    if let Some(reason) = end.bad.take() {
        if valid_frame_after(
            &seg.file,
            &seg.path,
            end.pos + 1,
            file_len,
            opts.max_record_bytes,
        )? {
            return Err(corrupt(
                id,
                end.next_offset,
                &seg.path,
                format!("{reason}, and valid records follow it"),
            ));
        }
        let dropped = file_len - end.pos;
        tracing::warn!(
            partition = %id,
            offset = end.next_offset,
            dropped_bytes = dropped,
            reason = %reason,
            "truncating a torn tail of the log"
        );
        seg.file
            .set_len(end.pos)
            .map_err(|e| Error::io("truncate torn tail of", &seg.path, e))?;
        seg.file
            .sync_all()
            .map_err(|e| Error::io("fsync segment", &seg.path, e))?;
    }
    seg.len = end.pos;
    let keep = seg
        .index
        .iter()
        .take_while(|e| u64::from(e.pos) < end.pos)
        .count();
    seg.index.truncate(keep);
    write_index(dir, base, &seg.index)?;
    Ok((seg, end.next_offset, end.bytes_since_index))
}

impl ReplayableLog for FileLog {
    fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    fn append_batch(&self, partition: PartitionId, records: &[&[u8]]) -> Result<OffsetRange> {
        self.part(partition)?.append(records, &self.opts)
    }

    fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<RecordBatch> {
        self.part(partition)?.read(from.0, max_records, &self.opts)
    }

    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(LogOffset(self.part(partition)?.start()))
    }

    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(LogOffset(self.part(partition)?.end))
    }

    fn sync(&self) -> Result<()> {
        for p in 0..self.parts.len() {
            let mut part = self.part(PartitionId(p as u32))?;
            if part.unsynced > 0 {
                part.sync()?;
            }
        }
        Ok(())
    }

    fn truncate_before(&self, partition: PartitionId, offset: LogOffset) -> Result<LogOffset> {
        Ok(LogOffset(self.part(partition)?.truncate_before(offset.0)?))
    }

    fn durability(&self) -> Durability {
        match self.opts.sync {
            SyncPolicy::EveryAppend => Durability::OnAppend,
            SyncPolicy::Interval { every, .. } => Durability::OnSync { interval: every },
            SyncPolicy::Os => Durability::Volatile,
        }
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "final log sync failed");
        }
    }
}
