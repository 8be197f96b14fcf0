//! [`MemoryLog`]: the [`ReplayableLog`] contract in memory, for tests and examples.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use super::{
    check_partition, Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog,
};
use crate::error::{Error, Result};

/// A log held in memory. It behaves like [`FileLog`](super::FileLog) (offsets, retention,
/// size limits, errors) except that nothing survives the process.
#[derive(Debug)]
pub struct MemoryLog {
    parts: Vec<Mutex<MemPartition>>,
    max_record_bytes: u32,
}

#[derive(Debug, Default)]
struct MemPartition {
    start: u64,
    records: VecDeque<Vec<u8>>,
}

impl MemPartition {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }
}

impl MemoryLog {
    /// A log with `partitions` partitions and the default maximum record size (16 MiB).
    pub fn new(partitions: u32) -> MemoryLog {
        MemoryLog::with_max_record_bytes(partitions, 16 << 20)
    }

    /// A log with `partitions` partitions refusing records above `max_record_bytes`.
    pub fn with_max_record_bytes(partitions: u32, max_record_bytes: u32) -> MemoryLog {
        MemoryLog {
            parts: (0..partitions).map(|_| Mutex::default()).collect(),
            max_record_bytes,
        }
    }

    fn part(&self, partition: PartitionId) -> Result<MutexGuard<'_, MemPartition>> {
        let i = check_partition(partition, self.parts.len() as u32)?;
        Ok(self.parts[i].lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ReplayableLog for MemoryLog {
    fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    fn append_batch(&self, partition: PartitionId, records: &[&[u8]]) -> Result<OffsetRange> {
        let mut p = self.part(partition)?;
        for r in records {
            if r.len() as u64 > u64::from(self.max_record_bytes) {
                return Err(Error::RecordTooLarge {
                    partition,
                    len: r.len() as u64,
                    max: u64::from(self.max_record_bytes),
                });
            }
        }
        let start = p.end();
        p.records.extend(records.iter().map(|r| r.to_vec()));
        Ok(OffsetRange {
            start: LogOffset(start),
            end: LogOffset(p.end()),
        })
    }

    fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<RecordBatch> {
        let p = self.part(partition)?;
        if from.0 < p.start || from.0 > p.end() {
            return Err(Error::OffsetOutOfRange {
                partition,
                offset: from,
                start: LogOffset(p.start),
                end: LogOffset(p.end()),
            });
        }
        let mut batch = RecordBatch::new(partition, from);
        let skip = (from.0 - p.start) as usize;
        for r in p.records.iter().skip(skip).take(max_records) {
            batch.push_dense(r);
        }
        Ok(batch)
    }

    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(LogOffset(self.part(partition)?.start))
    }

    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(LogOffset(self.part(partition)?.end()))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn truncate_before(&self, partition: PartitionId, offset: LogOffset) -> Result<LogOffset> {
        let mut p = self.part(partition)?;
        let upto = offset.0.min(p.end());
        while p.start < upto {
            p.records.pop_front();
            p.start += 1;
        }
        Ok(LogOffset(p.start))
    }

    fn durability(&self) -> Durability {
        Durability::Volatile
    }
}
