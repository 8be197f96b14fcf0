//! [`FileLog`]: the embedded, file-backed [`ReplayableLog`].
//!
//! Layout under the log's directory:
//! ```text
//! log.meta                      envelope(msgpack {version, partitions, max_record_bytes}),
//!                               written atomically
//! p-00000/
//!   00000000000000000000.log    segment: "SNAPSEG1" + base offset (u64le), then frames
//!   00000000000000000000.idx    index: (offset - base: u32le, position: u32le,
//!                               crc32c of those 8 bytes: u32le) entries
//!   00000000000000052311.log    next segment, named by its base offset
//! ```
//! Only the newest segment of a partition (the *active* one) is appended to. It is rolled when
//! the next frame would make it larger than [`FileLogOptions::segment_bytes`]: the old segment
//! is synced (its frames, then its remaining index entries and a final sync mark) before the
//! new one is created, so every sealed segment is durable and whole.
//!
//! The index of a segment holds one entry per [`FileLogOptions::index_interval_bytes`] of frames
//! and one *sync mark* per sync: an entry naming the offset and position where the data that
//! sync made durable ends. Entries are strictly increasing in both offset and position; a mark
//! at the position a later record is written to serves as that record's entry. Entries are kept
//! in memory as records are appended and written to the index file only by a sync, after the
//! segment's fsync succeeded, and the index file is then fsynced: every durable index entry
//! points into durable data, in whatever order the operating system writes pages out.
//!
//! The index is a cache for seeking: every entry carries a checksum, and entries are checked
//! against the offsets stored in the frames they point at. An entry that fails its checksum
//! (a torn index write, garbage) ends the index as loaded: what follows it is rebuilt by
//! scanning the segment. An index file is read only up to the size its segment can need
//! (one entry per frame header), never whole. A read whose seek entry does not match scans its segment from the
//! start instead (logged), and a missing or stale index of a sealed segment is rebuilt on open.
//! Seeking reads at most one index interval of frames before the first record asked for;
//! opening reads only the tail of the active segment after its last index entry.
//!
//! Recovery on open, for the active segment: the scan starts at the last index entry that is
//! at the end of the file or at a frame storing the offset the entry claims (entries that are
//! neither are dropped), and reads forward. The first frame that is incomplete or fails its
//! checksum starts a torn tail, data written after the last sync: the segment is truncated
//! there (logged with the number of bytes dropped), and the recovered tail is fsynced and
//! marked in the index. If an index entry lies past that point (in particular past the end of
//! the file), data that was fsynced is missing or damaged, and open fails with
//! [`Error::LogCorrupt`] naming the partition and offset instead. Data before the last sync
//! mark is not scanned on open: reads check every frame's checksum and offset, so corruption
//! there is reported when it is read, as [`Error::LogCorrupt`] with its offset, and never
//! returned as data.
//!
//! Every file operation goes through the log's [`FileSystem`] ([`StdFs`] unless
//! [`FileLog::open_on`] names another). After a failed write or fsync a partition never
//! continues on what the kernel may have dropped: the failing call reports the error (class
//! Restart), syncs are refused, and the next append first recovers the partition in place:
//! the active segment and its index are cut back to the last successful sync and the
//! partition is reopened from the disk, so a log the application shares by `Arc` outlives a
//! job restart instead of refusing writes forever.
//!
//! `log.meta` keeps the largest [`FileLogOptions::max_record_bytes`] the log was opened with.
//! Reads and recovery accept frames up to that size even when the log is reopened with a lower
//! limit (which then applies to appends only), so lowering the limit never turns stored records
//! into a torn tail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::frame::{check_frame, encode_frame, FrameCheck, FRAME_HEADER};
use super::{
    check_partition, Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog,
};
use crate::error::{Error, Result};
use crate::storage::{self, fs::read_exact_at, FileHandle, FileSystem, OpenMode, StdFs};

const SEGMENT_MAGIC: &[u8; 8] = b"SNAPSEG1";
const SEGMENT_HEADER: u64 = 16;
const META_MAGIC: &[u8; 8] = b"SNAPLOGM";
const META_FILE: &str = "log.meta";
const INDEX_ENTRY: usize = 12;
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
    /// `sync` calls). A power failure can lose any amount of data written since the last sync.
    /// Since the operating system may write pages out of order, a lost record can lie in front
    /// of one that survived: the next open truncates the tail at the first lost record, so the
    /// records after it are lost with it.
    Os,
}

/// Settings of a [`FileLog`].
#[derive(Debug, Clone)]
pub struct FileLogOptions {
    /// Number of partitions of a new log. Opening an existing log with another count fails.
    pub partitions: u32,
    /// Roll the active segment when it would grow past this many bytes (at most 1 GiB).
    pub segment_bytes: u64,
    /// Largest record payload accepted on append. Reads trust length fields up to the largest
    /// value the log was ever opened with (kept in `log.meta`), so lowering this never makes
    /// stored records unreadable or truncates them.
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
        if !valid_max_record(self.max_record_bytes) {
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
    /// The largest record payload appends may have written: the highest `max_record_bytes` the
    /// log was opened with. Absent in logs created before it was stored.
    #[serde(default)]
    max_record_bytes: Option<u32>,
}

/// True when `max` is a record size limit a log can have: above 0, and a frame of that size
/// fits in the largest segment.
fn valid_max_record(max: u32) -> bool {
    max > 0 && u64::from(max) + SEGMENT_HEADER + FRAME_HEADER as u64 <= MAX_SEGMENT_BYTES
}

fn read_meta(fs: &dyn FileSystem, path: &Path) -> Result<LogMeta> {
    let bytes = match storage::read_bounded(fs, path, 4096)? {
        Ok(b) => b,
        Err(reason) => return Err(Error::Config(format!("{}: {reason}", path.display()))),
    };
    let payload = storage::decode_envelope(META_MAGIC, &bytes, 4096).map_err(|reason| {
        Error::Config(format!(
            "{} is not a valid log meta file: {reason}",
            path.display()
        ))
    })?;
    let meta: LogMeta = crate::codec::decode(payload, "log meta file")?;
    if meta.version != 1 {
        return Err(Error::Config(format!(
            "{}: unsupported log format version {}",
            path.display(),
            meta.version
        )));
    }
    if let Some(max) = meta.max_record_bytes {
        if !valid_max_record(max) {
            return Err(Error::Config(format!(
                "{}: invalid stored max_record_bytes {max}",
                path.display()
            )));
        }
    }
    Ok(meta)
}

fn write_meta(fs: &dyn FileSystem, path: &Path, meta: &LogMeta) -> Result<()> {
    let payload = crate::codec::encode_named(meta, "log meta file")?;
    storage::write_atomic(fs, path, &storage::encode_envelope(META_MAGIC, &payload))
}

/// The file-backed [`ReplayableLog`]. See the module documentation for the format and the
/// recovery rules.
#[derive(Debug)]
pub struct FileLog {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    opts: FileLogOptions,
    parts: Vec<Mutex<Partition>>,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    rel: u32,
    pos: u32,
}

impl IndexEntry {
    fn crc(rel: u32, pos: u32) -> u32 {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&rel.to_le_bytes());
        b[4..].copy_from_slice(&pos.to_le_bytes());
        crc32c::crc32c(&b)
    }

    /// Appends the entry's [`INDEX_ENTRY`] bytes.
    fn encode(&self, out: &mut Vec<u8>) {
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

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<dyn FileHandle>,
    /// Bytes of valid data, header included.
    len: u64,
    index: Vec<IndexEntry>,
}

impl Segment {
    /// Where to start a scan for `offset`: (position, offset at it, whether an index entry
    /// gave it rather than the segment header).
    fn seek_point(&self, offset: u64) -> (u64, u64, bool) {
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

#[derive(Debug)]
struct Partition {
    fs: Arc<dyn FileSystem>,
    id: PartitionId,
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// The offset the next record gets.
    end: u64,
    /// The largest length field trusted on read (see the module documentation).
    max_read: u32,
    /// The active segment's index file.
    index_file: Arc<dyn FileHandle>,
    index_file_len: u64,
    /// How many entries of the active segment's in-memory index are in its index file. The
    /// others point into data not yet fsynced; the next sync writes them.
    index_written: usize,
    bytes_since_index: u64,
    /// The active segment's base and length as of the last successful sync: what a recovery
    /// in place cuts the segment back to.
    synced: (u64, u64),
    poisoned: Option<String>,
    unsynced: u64,
    last_sync: Instant,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Appends `entry` to `index` if it lies strictly after the last entry in both offset and
/// position; otherwise (a sync mark already at that point serves as the entry) leaves `index`
/// as it is. Returns whether it appended.
fn push_entry(index: &mut Vec<IndexEntry>, entry: IndexEntry) -> bool {
    let after_last = index
        .last()
        .is_none_or(|last| entry.rel > last.rel && entry.pos > last.pos);
    if after_last {
        index.push(entry);
    }
    after_last
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
    file: &'a dyn FileHandle,
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
    fn new(file: &'a dyn FileHandle, pos: u64, limit: u64, max_record: u32) -> Self {
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
                    if let Err(e) = read_exact_at(self.file, &mut self.buf, self.pos) {
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
        Self::open_on(StdFs::shared(), dir, opts)
    }

    /// [`open`](Self::open) on the file system `fs` (a
    /// [`SimDisk`](crate::storage::sim::SimDisk) in crash tests).
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        opts: FileLogOptions,
    ) -> Result<FileLog> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        storage::create_dir_durable(fs.as_ref(), &dir)?;
        let meta_path = dir.join(META_FILE);
        let stored_max = if fs.file_len(&meta_path).is_ok() {
            let meta = read_meta(fs.as_ref(), &meta_path)?;
            if meta.partitions != opts.partitions {
                return Err(Error::Config(format!(
                    "the log in {} has {} partitions, not the {} asked for",
                    dir.display(),
                    meta.partitions,
                    opts.partitions
                )));
            }
            meta.max_record_bytes
        } else {
            None
        };
        let partitions = opts.partitions;
        // Frames up to the largest limit the log was ever opened with are valid data.
        let max_read = stored_max.map_or(opts.max_record_bytes, |m| m.max(opts.max_record_bytes));
        if stored_max != Some(max_read) {
            // A new log, a log from before the limit was stored, or a limit above every earlier
            // one: store it before any record of that size can be appended, so that a later open
            // with a lower limit still reads such records instead of truncating them as torn.
            let meta = LogMeta {
                version: 1,
                partitions,
                max_record_bytes: Some(max_read),
            };
            write_meta(fs.as_ref(), &meta_path, &meta)?;
        }
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let pdir = dir.join(format!("p-{p:05}"));
            parts.push(Mutex::new(Partition::open(
                Arc::clone(&fs),
                PartitionId(p),
                pdir,
                &opts,
                max_read,
            )?));
        }
        Ok(FileLog {
            fs,
            dir,
            opts,
            parts,
        })
    }

    /// The file system the log lives on.
    pub fn file_system(&self) -> &Arc<dyn FileSystem> {
        &self.fs
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
    fn open(
        fs: Arc<dyn FileSystem>,
        id: PartitionId,
        dir: PathBuf,
        opts: &FileLogOptions,
        max_read: u32,
    ) -> Result<Partition> {
        let f = fs.as_ref();
        storage::create_dir_durable(f, &dir)?;
        let mut bases = segment_bases(f, &dir)?;
        bases.sort_unstable();
        if bases.is_empty() {
            create_segment(f, &dir, 0)?;
            bases.push(0);
        }
        let mut segments = BTreeMap::new();
        let last = bases.len() - 1;
        for (i, &base) in bases.iter().enumerate().take(last) {
            let next = bases.get(i + 1).copied();
            let seg = open_sealed(f, id, &dir, base, next, max_read, opts.index_interval_bytes)?;
            segments.insert(base, seg);
        }
        let active_base = bases[last];
        let (active, end, bytes_since_index) = recover_active(
            f,
            id,
            &dir,
            active_base,
            max_read,
            opts.index_interval_bytes,
        )?;
        // Recovery leaves the index file holding exactly the in-memory index.
        let index_written = active.index.len();
        let synced = (active_base, active.len);
        segments.insert(active_base, active);
        let ipath = index_path(&dir, active_base);
        let index_file = f
            .open(&ipath, OpenMode::Create)
            .map_err(|e| Error::io("open index", &ipath, e))?;
        let index_file_len = index_file
            .len()
            .map_err(|e| Error::io("stat index", &ipath, e))?;
        Ok(Partition {
            fs,
            id,
            dir,
            segments,
            end,
            max_read,
            index_file,
            index_file_len,
            index_written,
            bytes_since_index,
            synced,
            poisoned: None,
            unsynced: 0,
            last_sync: Instant::now(),
            buf: Vec::new(),
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
        if self.poisoned.is_some() {
            self.recover_in_place(opts)?;
        }
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
        buf.clear();
        let mut end = self.end;
        let mut seg_len = self.active().len;
        let result = (|| {
            for r in records {
                let frame_len = (FRAME_HEADER + r.len()) as u64;
                if seg_len > SEGMENT_HEADER && seg_len + frame_len > opts.segment_bytes {
                    self.flush_frames(&buf, seg_len)?;
                    buf.clear();
                    self.end = end;
                    self.roll()?;
                    seg_len = SEGMENT_HEADER;
                }
                if self.bytes_since_index >= u64::from(opts.index_interval_bytes) {
                    // Kept in memory only: the next sync writes it, after the frame is durable.
                    // A sync mark already at this position serves as the entry.
                    let seg = self.active();
                    let entry = IndexEntry {
                        rel: (end - seg.base) as u32,
                        pos: seg_len as u32,
                    };
                    push_entry(&mut seg.index, entry);
                    self.bytes_since_index = 0;
                }
                encode_frame(&mut buf, end, r);
                end += 1;
                seg_len += frame_len;
                self.bytes_since_index += frame_len;
            }
            self.flush_frames(&buf, seg_len)?;
            self.end = end;
            Ok(())
        })();
        self.buf = buf;
        result
    }

    /// Writes buffered frames at the end of the active segment, then records its new length.
    fn flush_frames(&mut self, buf: &[u8], new_len: u64) -> Result<()> {
        let seg = self.active();
        if !buf.is_empty() {
            seg.file
                .write_at(buf, seg.len)
                .map_err(|e| Error::io("write segment", &seg.path, e))?;
        }
        seg.len = new_len;
        Ok(())
    }

    /// Seals the active segment and starts a new one at the current end offset. The sync makes
    /// the old segment's frames durable and then writes and fsyncs its remaining index entries
    /// and its final mark, all before the new segment exists.
    fn roll(&mut self) -> Result<()> {
        self.sync()?;
        let base = self.end;
        let seg = create_segment(self.fs.as_ref(), &self.dir, base)?;
        let ipath = index_path(&self.dir, base);
        self.index_file = self
            .fs
            .open(&ipath, OpenMode::Truncate)
            .map_err(|e| Error::io("create index", &ipath, e))?;
        self.index_file_len = 0;
        self.index_written = 0;
        self.bytes_since_index = 0;
        storage::sync_dir(self.fs.as_ref(), &self.dir)?;
        self.segments.insert(base, seg);
        self.synced = (base, SEGMENT_HEADER);
        tracing::debug!(partition = %self.id, base, "rolled log segment");
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.check_poisoned()?;
        match self.sync_active() {
            Ok(()) => {
                self.unsynced = 0;
                self.last_sync = Instant::now();
                let seg = self.active();
                self.synced = (seg.base, seg.len);
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

    /// After a failed write or sync (the partition is poisoned): cuts the active segment and
    /// its index file back to what the last successful sync made durable, fsyncs both, and
    /// reopens the partition from the disk. Records appended after that sync are dropped
    /// (their append or sync reported the failure, or, under [`SyncPolicy::Interval`], they
    /// were not durable yet). On failure the partition stays poisoned and the next append tries
    /// again: a log shared by `Arc` outlives a job restart and recovers in place.
    fn recover_in_place(&mut self, opts: &FileLogOptions) -> Result<()> {
        let (base, len) = self.synced;
        let ipath = index_path(&self.dir, base);
        let index_len = self.index_file_len;
        let index_file = Arc::clone(&self.index_file);
        let seg = self.active();
        if seg.base == base {
            seg.file
                .set_len(len)
                .and_then(|()| seg.file.sync())
                .map_err(|e| Error::io("cut back the segment of", &seg.path, e))?;
            index_file
                .set_len(index_len)
                .and_then(|()| index_file.sync())
                .map_err(|e| Error::io("cut back the index", &ipath, e))?;
        }
        let reopened = Partition::open(
            Arc::clone(&self.fs),
            self.id,
            self.dir.clone(),
            opts,
            self.max_read,
        )?;
        tracing::warn!(partition = %self.id, dropped_from = reopened.end, dropped_to = self.end,
            "log partition recovered in place after a failed write or sync");
        *self = reopened;
        Ok(())
    }

    /// fsyncs the active segment; then appends to its index file the entries kept in memory
    /// since the last sync and a mark for the synced end, and fsyncs the index file. An index
    /// entry reaches the disk only after the data it points into.
    fn sync_active(&mut self) -> Result<()> {
        let end = self.end;
        let written = self.index_written;
        let (base, bytes, entries, marked) = {
            let seg = self.active();
            seg.file
                .sync_data()
                .map_err(|e| Error::io("fsync segment", &seg.path, e))?;
            let mark = IndexEntry {
                rel: (end - seg.base) as u32,
                pos: seg.len as u32,
            };
            let marked = seg.len > SEGMENT_HEADER && push_entry(&mut seg.index, mark);
            let mut bytes = Vec::new();
            for e in seg.index.get(written..).unwrap_or_default() {
                e.encode(&mut bytes);
            }
            (seg.base, bytes, seg.index.len(), marked)
        };
        if marked {
            // The mark serves as the next record's entry.
            self.bytes_since_index = 0;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let ipath = index_path(&self.dir, base);
        self.index_file
            .write_at(&bytes, self.index_file_len)
            .map_err(|e| Error::io("write index", &ipath, e))?;
        self.index_file
            .sync_data()
            .map_err(|e| Error::io("fsync index", &ipath, e))?;
        self.index_file_len += bytes.len() as u64;
        self.index_written = entries;
        Ok(())
    }

    /// The error for a read from `from`, outside the retained offsets.
    fn out_of_range(&self, from: u64) -> Error {
        Error::OffsetOutOfRange {
            partition: self.id,
            offset: LogOffset(from),
            start: LogOffset(self.start()),
            end: LogOffset(self.end),
        }
    }

    /// The base of the segment holding offset `from` (retained, so at least the start).
    fn segment_of(&self, from: u64) -> u64 {
        let below = self.segments.range(..=from).next_back();
        below.map_or_else(|| self.start(), |(b, _)| *b)
    }

    fn read(&self, from: u64, max_records: usize, opts: &FileLogOptions) -> Result<RecordBatch> {
        if from < self.start() || from > self.end {
            return Err(self.out_of_range(from));
        }
        let mut batch = RecordBatch::new(self.id, LogOffset(from));
        if from == self.end || max_records == 0 {
            return Ok(batch);
        }
        let mut segs = self.segments.range(self.segment_of(from)..).peekable();
        let mut target = from;
        while let Some((_, seg)) = segs.next() {
            let seg_end = segs.peek().map(|(b, _)| **b).unwrap_or(self.end);
            let (mut pos, mut expect, mut from_index) = seg.seek_point(target);
            loop {
                let mut reader = FrameReader::new(seg.file.as_ref(), pos, seg.len, self.max_read);
                // Whether a frame has confirmed the seek point.
                let mut confirmed = false;
                let failure = loop {
                    match reader
                        .next()
                        .map_err(|e| Error::io("read segment", &seg.path, e))?
                    {
                        Next::End if expect == seg_end => break None,
                        Next::End => {
                            break Some(format!(
                                "segment ends at offset {expect} but the next data starts at \
                                 {seg_end}"
                            ))
                        }
                        Next::Bad { reason, .. } => break Some(reason),
                        Next::Frame {
                            offset, start, len, ..
                        } => {
                            if offset != expect {
                                break Some(format!(
                                    "found the record of offset {offset} where {expect} belongs"
                                ));
                            }
                            confirmed = true;
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
                };
                match failure {
                    None => break,
                    Some(reason) if from_index && !confirmed => {
                        // The index entry, not the data, may be wrong (a flipped bit): scan the
                        // segment from its header. Nothing was added to the batch yet.
                        tracing::warn!(
                            partition = %self.id,
                            base = seg.base,
                            offset = expect,
                            reason = %reason,
                            "index entry does not match the segment; scanning it from the start"
                        );
                        pos = SEGMENT_HEADER;
                        expect = seg.base;
                        from_index = false;
                    }
                    Some(reason) => return Err(corrupt(self.id, expect, &seg.path, reason)),
                }
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
                self.fs
                    .remove_file(&seg.path)
                    .map_err(|e| Error::io("remove segment", &seg.path, e))?;
                let ipath = index_path(&self.dir, base);
                match self.fs.remove_file(&ipath) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove index", &ipath, e)),
                }
                removed = true;
            }
        }
        if removed {
            storage::sync_dir(self.fs.as_ref(), &self.dir)?;
            tracing::info!(partition = %self.id, start = self.start(), "log retention removed segments");
        }
        Ok(self.start())
    }
}

/// Creates an empty segment file with its header, fsynced.
fn create_segment(fs: &dyn FileSystem, dir: &Path, base: u64) -> Result<Segment> {
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

fn check_header(id: PartitionId, seg: &Segment) -> Result<()> {
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

/// The index file of a segment as loaded.
struct LoadedIndex {
    /// The longest prefix of plausible entries: strictly increasing in offset and position, at
    /// or after the segment header, at or before the end of the segment (an entry at the very
    /// end is a sync mark) and, for a sealed segment, at or below the next segment's base.
    entries: Vec<IndexEntry>,
    /// The entry that ended that prefix by lying past the end of the segment, if one did.
    beyond: Option<IndexEntry>,
    /// True when the file exists and every byte of it was read as one of `entries`.
    clean: bool,
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
fn load_index(
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

fn write_index(fs: &dyn FileSystem, dir: &Path, base: u64, index: &[IndexEntry]) -> Result<()> {
    let mut bytes = Vec::with_capacity(index.len() * INDEX_ENTRY);
    for e in index {
        e.encode(&mut bytes);
    }
    storage::write_atomic(fs, &index_path(dir, base), &bytes)
}

fn open_sealed(
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

/// Opens the active segment and recovers its tail (see the module documentation). Returns it
/// with the partition's end offset and the index byte counter. On return the index file holds
/// exactly the segment's in-memory index.
/// The base offsets of the segment files in a partition directory (`<20 digits>.log`), in
/// no particular order.
fn segment_bases(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
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

/// True when a segment file of `len` bytes is shorter than its header or all zeros.
fn header_torn(file: &dyn FileHandle, path: &Path, len: u64) -> Result<bool> {
    Ok(len < SEGMENT_HEADER || zero_filled(file, path, len)?)
}

fn recover_active(
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
        // Every partition with unsynced data gets its sync, even after another one failed.
        let mut first_error = None;
        for p in 0..self.parts.len() {
            let result = self.part(PartitionId(p as u32)).and_then(|mut part| {
                if part.unsynced > 0 {
                    part.sync()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
