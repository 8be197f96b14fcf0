//! The replayable log that sources read: partitions of records addressed by offset.
//!
//! A [`ReplayableLog`] holds a fixed number of partitions. Each partition is a sequence of
//! opaque byte records numbered 0, 1, 2, ... in append order. A reader can ask for the records
//! from any retained offset as often as it likes and always gets the same bytes back: that is
//! what lets a restarted source seek to the offset recorded in a checkpoint and replay.
//!
//! Implementations:
//! - [`FileLog`]: the embedded default, segment files with CRC32C-framed records, a sparse
//!   offset index and a [`SyncPolicy`]; a torn tail is truncated on open, any other corruption
//!   is reported as [`Error::LogCorrupt`] and never returned as data.
//! - [`MemoryLog`]: the same contract in memory, for tests and examples.
//! - [`GeneratorLog`]: read-only records computed from their position (benchmarks, tests).
//!
//! Typed records go through [`TypedLog`] and the [`codec`] layer (MessagePack via rmp-serde);
//! the file format itself has fixed-width little-endian fields, never `usize`. Actors append
//! by message through [`LogWriter`], which replies once the record is durable.

mod file;
pub(crate) mod frame;
mod generator;
mod memory;
mod typed;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The codec, at its former path (`snapflow::log::codec`); it lives in [`crate::codec`].
pub use crate::codec;
pub use file::{
    inspect_log, FileLog, FileLogOptions, LogInfo, LogProblem, PartitionInfo, SegmentInfo,
    SyncPolicy,
};
pub use generator::{GeneratorLog, PayloadWriter};
pub use memory::MemoryLog;
pub use typed::TypedLog;
pub use writer::{Append, AppendBatch, LogWriter, SyncNow};

pub use crate::ids::{LogOffset, PartitionId};

/// A half-open range of offsets `[start, end)`, as returned by a batch append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OffsetRange {
    /// The first offset in the range.
    pub start: LogOffset,
    /// The offset after the last one in the range.
    pub end: LogOffset,
}

impl OffsetRange {
    /// How many offsets the range holds.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// True when the range holds no offset.
    pub fn is_empty(&self) -> bool {
        self.end.0 == self.start.0
    }
}

/// When an appended record is durable, that is, survives a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable when `append` returns.
    OnAppend,
    /// Durable after the next [`ReplayableLog::sync`], which the log runs at least this often
    /// while appends arrive.
    OnSync {
        /// The longest time a record stays unsynced while appends keep arriving.
        interval: Duration,
    },
    /// Never durable against power failure (a memory log, or a file log leaving syncs to the
    /// operating system): only the process keeps it.
    Volatile,
}

/// Records read from one partition, in offset order. In the logs of this crate their offsets
/// are consecutive from [`base_offset`]; a log whose offsets have gaps (Kafka's: transaction
/// markers, aborted records and compaction leave them) gives each record's offset with
/// [`push_at`](RecordBatch::push_at), and may move [`next_offset`](RecordBatch::next_offset)
/// past offsets that hold no record ([`set_next_offset`](RecordBatch::set_next_offset)). The
/// payloads share one buffer, so a batch costs two allocations whatever its length (three
/// with gaps).
///
/// [`base_offset`]: RecordBatch::base_offset
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    partition: PartitionId,
    base_offset: LogOffset,
    data: Vec<u8>,
    ends: Vec<u32>,
    /// Each record's offset, once one was not the one after the last (empty while dense).
    offsets: Vec<u64>,
    /// Where to read next, when the log said (beyond the last record's offset plus one).
    next: Option<LogOffset>,
}

impl RecordBatch {
    /// An empty batch of `partition` starting at `base_offset`, for implementations of
    /// [`ReplayableLog`] outside this crate.
    pub fn new(partition: PartitionId, base_offset: LogOffset) -> Self {
        RecordBatch {
            partition,
            base_offset,
            data: Vec::new(),
            ends: Vec::new(),
            offsets: Vec::new(),
            next: None,
        }
    }

    /// Appends the next record's payload, at [`next_offset`](Self::next_offset).
    #[inline]
    pub fn push(&mut self, payload: &[u8]) {
        if !self.offsets.is_empty() || self.next.is_some() {
            self.push_after_gap(payload);
            return;
        }
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len() as u32);
    }

    /// [`push`](Self::push) for the logs of this crate, which fill fresh batches with
    /// consecutive records only: no check on the per-record path.
    #[inline]
    pub(crate) fn push_dense(&mut self, payload: &[u8]) {
        debug_assert!(self.offsets.is_empty() && self.next.is_none());
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len() as u32);
    }

    /// Appends the next record, whose payload `write` appends to the batch's buffer in place
    /// (no copy through a buffer of its own); it must only append.
    #[inline]
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        debug_assert!(self.offsets.is_empty() && self.next.is_none());
        write(&mut self.data);
        self.ends.push(self.data.len() as u32);
    }

    /// [`push`](Self::push) into a batch with gaps: off the dense logs' per-record path.
    #[cold]
    #[inline(never)]
    fn push_after_gap(&mut self, payload: &[u8]) {
        // At the next offset, which `push_at` never refuses.
        let _ = self.push_at(self.next_offset(), payload);
    }

    /// Keeps the first `len` records (all of them when the batch has no more).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.ends.len() {
            return;
        }
        self.ends.truncate(len);
        self.offsets.truncate(len);
        self.data
            .truncate(self.ends.last().map_or(0, |&e| e as usize));
        self.next = None;
    }

    /// Appends a record at `offset`, which may leave a gap after the last one. Refused
    /// ([`Error::Internal`], a bug of the log) when `offset` is below
    /// [`next_offset`](Self::next_offset): offsets only grow.
    pub fn push_at(&mut self, offset: LogOffset, payload: &[u8]) -> Result<()> {
        let expected = self.next_offset();
        if offset < expected {
            return Err(Error::Internal(format!(
                "record at offset {offset} of partition {} pushed after offset {expected}",
                self.partition
            )));
        }
        if offset != self.last_offset_plus_one() && self.offsets.is_empty() {
            // The first gap: from here on every record's offset is kept.
            let base = self.base_offset.0;
            self.offsets = (0..self.ends.len() as u64).map(|i| base + i).collect();
        }
        if self.is_empty() && self.offsets.is_empty() && offset != self.base_offset {
            self.base_offset = offset;
        } else if !self.offsets.is_empty() {
            self.offsets.push(offset.0);
        }
        self.next = None;
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len() as u32);
        Ok(())
    }

    /// Says that the next read starts at `next`, beyond the last record's offset (a log
    /// whose offsets after it hold no record, such as Kafka's transaction markers). Ignored
    /// unless it moves the next offset on.
    pub fn set_next_offset(&mut self, next: LogOffset) {
        if next > self.next_offset() {
            self.next = Some(next);
        }
    }

    /// The total payload bytes of the batch.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The partition the records came from.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The offset of the first record (also when the batch is empty: then it is the offset
    /// that was asked for).
    pub fn base_offset(&self) -> LogOffset {
        self.base_offset
    }

    /// True when the records' offsets are consecutive from [`base_offset`](Self::base_offset).
    pub fn is_dense(&self) -> bool {
        self.offsets.is_empty()
    }

    fn last_offset_plus_one(&self) -> LogOffset {
        match self.offsets.last() {
            Some(&last) => LogOffset(last + 1),
            None => LogOffset(self.base_offset.0 + self.ends.len() as u64),
        }
    }

    /// The offset to read from next: after the last record of the batch, or further when the
    /// log said so.
    pub fn next_offset(&self) -> LogOffset {
        self.next.unwrap_or_else(|| self.last_offset_plus_one())
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the batch holds no record (the reader is at the end of the partition).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payload of the `i`-th record of the batch, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.data[start..end])
    }

    /// The records with their offsets, in offset order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (LogOffset, &[u8])> + '_ {
        let mut start = 0usize;
        let (base, offsets, data) = (self.base_offset.0, &self.offsets[..], &self.data[..]);
        let dense = offsets.is_empty();
        self.ends.iter().enumerate().map(move |(i, &end)| {
            let s = start;
            start = end as usize;
            // Every record has its offset in `offsets` once the batch is not dense.
            let offset = if dense { base + i as u64 } else { offsets[i] };
            (LogOffset(offset), &data[s..end as usize])
        })
    }
}

/// A partitioned, offset-addressed, replayable log of byte records.
///
/// All methods take `&self`: implementations synchronise per partition, so one log can be
/// shared (`Arc<dyn ReplayableLog>`) by the source tasks that read it and the writers that
/// append to it.
pub trait ReplayableLog: Send + Sync + fmt::Debug {
    /// The number of partitions, fixed when the log was created.
    fn partitions(&self) -> u32;

    /// Appends one record and returns its offset.
    fn append(&self, partition: PartitionId, payload: &[u8]) -> Result<LogOffset> {
        Ok(self.append_batch(partition, &[payload])?.start)
    }

    /// Appends records in order, all or none if one is refused for its size, and returns the
    /// range of offsets they got. The batch is written with one write call where possible.
    fn append_batch(&self, partition: PartitionId, records: &[&[u8]]) -> Result<OffsetRange>;

    /// Reads up to `max_records` records starting at `from`. Reading at the end offset gives
    /// an empty batch; below the start offset or past the end gives
    /// [`Error::OffsetOutOfRange`].
    fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<RecordBatch>;

    /// The oldest offset still retained.
    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset>;

    /// The offset the next appended record will get.
    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset>;

    /// Makes every record appended so far durable (a no-op for a memory log).
    fn sync(&self) -> Result<()>;

    /// Retention: drops whole stored units (segments) that hold only offsets below `offset`,
    /// and returns the new start offset, which may stay below `offset`. Never drops records at
    /// or above `offset`.
    fn truncate_before(&self, partition: PartitionId, offset: LogOffset) -> Result<LogOffset>;

    /// When an appended record becomes durable.
    fn durability(&self) -> Durability;
}

impl<L: ReplayableLog + ?Sized> ReplayableLog for Arc<L> {
    fn partitions(&self) -> u32 {
        (**self).partitions()
    }
    fn append(&self, partition: PartitionId, payload: &[u8]) -> Result<LogOffset> {
        (**self).append(partition, payload)
    }
    fn append_batch(&self, partition: PartitionId, records: &[&[u8]]) -> Result<OffsetRange> {
        (**self).append_batch(partition, records)
    }
    fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<RecordBatch> {
        (**self).read(partition, from, max_records)
    }
    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        (**self).start_offset(partition)
    }
    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        (**self).end_offset(partition)
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
    fn truncate_before(&self, partition: PartitionId, offset: LogOffset) -> Result<LogOffset> {
        (**self).truncate_before(partition, offset)
    }
    fn durability(&self) -> Durability {
        (**self).durability()
    }
}

/// Returns the error for a partition number that is not below `partitions`.
pub(crate) fn check_partition(partition: PartitionId, partitions: u32) -> Result<usize> {
    if partition.0 < partitions {
        Ok(partition.0 as usize)
    } else {
        Err(Error::UnknownPartition {
            partition,
            partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_batch_iterates_offsets_and_payloads_in_order() {
        let mut b = RecordBatch::new(PartitionId(0), LogOffset(10));
        b.push(b"a");
        b.push(b"");
        b.push(b"ccc");
        let got: Vec<_> = b.iter().map(|(o, p)| (o.0, p.to_vec())).collect();
        assert_eq!(
            got,
            vec![(10, b"a".to_vec()), (11, vec![]), (12, b"ccc".to_vec())]
        );
        assert_eq!(b.next_offset(), LogOffset(13));
        assert_eq!(b.get(2), Some(&b"ccc"[..]));
        assert_eq!(b.get(3), None);
    }

    #[test]
    fn a_record_batch_with_gaps_keeps_each_offset_and_may_skip_past_its_last_record() {
        let mut b = RecordBatch::new(PartitionId(1), LogOffset(5));
        // The first record is further on than asked (a marker at 5).
        b.push_at(LogOffset(6), b"x").expect("push");
        assert!(b.is_dense());
        b.push_at(LogOffset(7), b"y").expect("push");
        b.push_at(LogOffset(10), b"z").expect("push");
        assert!(!b.is_dense());
        b.push(b"w");
        let got: Vec<_> = b.iter().map(|(o, p)| (o.0, p.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (6, b"x".to_vec()),
                (7, b"y".to_vec()),
                (10, b"z".to_vec()),
                (11, b"w".to_vec())
            ]
        );
        assert_eq!(b.base_offset(), LogOffset(6));
        assert_eq!(b.next_offset(), LogOffset(12));
        assert!(
            b.push_at(LogOffset(11), b"back").is_err(),
            "offsets only grow"
        );
        b.set_next_offset(LogOffset(14));
        assert_eq!(b.next_offset(), LogOffset(14));
        b.set_next_offset(LogOffset(3));
        assert_eq!(b.next_offset(), LogOffset(14), "never moves back");
        // An empty batch may move on too (only markers were read).
        let mut e = RecordBatch::new(PartitionId(0), LogOffset(8));
        e.set_next_offset(LogOffset(9));
        assert!(e.is_empty());
        assert_eq!(e.next_offset(), LogOffset(9));
        // Truncated: the records kept, and what follows them.
        b.truncate(2);
        let kept: Vec<_> = b.iter().map(|(o, p)| (o.0, p.to_vec())).collect();
        assert_eq!(kept, vec![(6, b"x".to_vec()), (7, b"y".to_vec())]);
        assert_eq!(b.next_offset(), LogOffset(8));
        b.truncate(5);
        assert_eq!(b.len(), 2);
    }
}
