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

mod index;
mod inspect;
mod layout;
mod meta;
mod reader;
mod recovery;
mod segment;

pub use inspect::{inspect_log, LogInfo, LogProblem, PartitionInfo, SegmentInfo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::frame::{encode_frame, FRAME_HEADER};
use super::{
    check_partition, Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog,
};
use crate::error::{Error, Result};
use crate::storage::{self, FileHandle, FileSystem, OpenMode, StdFs};

use index::{index_path, push_entry, IndexEntry};
use layout::{corrupt, MAX_SEGMENT_BYTES, SEGMENT_HEADER};
use meta::{read_meta, valid_max_record, write_meta, LogMeta, META_FILE};
use reader::{FrameReader, Next};
use recovery::{open_sealed, recover_active, segment_bases};
use segment::{create_segment, Segment};

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

/// The file-backed [`ReplayableLog`]. See the module documentation for the format and the
/// recovery rules.
#[derive(Debug)]
pub struct FileLog {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    opts: FileLogOptions,
    parts: Vec<Mutex<Partition>>,
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
                                batch.push_dense(reader.payload(start, len));
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
