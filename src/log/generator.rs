//! [`GeneratorLog`]: a read-only log whose records are computed from their position, for
//! benchmarks and tests that need a large or endless replayable input without storing it.

use std::fmt;
use std::sync::Arc;

use super::{
    check_partition, Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog,
};
use crate::error::{Error, Result};

/// Appends the payload of the record at (partition, offset).
type Make = Arc<dyn Fn(PartitionId, LogOffset, &mut PayloadWriter<'_>) + Send + Sync>;

/// Where a [`GeneratorLog`]'s `make` writes one record's payload: straight into the batch
/// being read, so a record costs no copy. It only appends, so the records before it in the
/// batch stay as they are.
#[derive(Debug)]
pub struct PayloadWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl PayloadWriter<'_> {
    /// Appends bytes to the payload.
    #[inline]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends one byte to the payload.
    #[inline]
    pub fn push(&mut self, byte: u8) {
        self.buf.push(byte);
    }

    /// The payload's length so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True while nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::io::Write for PayloadWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A replayable log whose record at `(partition, offset)` is whatever `make` writes for it.
/// Reading the same offset always gives the same bytes, as a source replaying after a restore
/// needs. Appends are refused.
pub struct GeneratorLog {
    partitions: u32,
    len: Option<u64>,
    make: Make,
}

impl fmt::Debug for GeneratorLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratorLog")
            .field("partitions", &self.partitions)
            .field("len", &self.len)
            .finish()
    }
}

impl GeneratorLog {
    /// A log of `partitions` partitions of `len` records each (`None`: endless); `make`
    /// writes the payload of the record at (partition, offset).
    pub fn new(
        partitions: u32,
        len: Option<u64>,
        make: impl Fn(PartitionId, LogOffset, &mut PayloadWriter<'_>) + Send + Sync + 'static,
    ) -> GeneratorLog {
        GeneratorLog {
            partitions,
            len,
            make: Arc::new(make),
        }
    }

    /// A log whose record i of partition p is the number `i * partitions + p`, as 8 bytes
    /// little endian: every number below `partitions * len` exactly once over all partitions.
    pub fn numbers(partitions: u32, len: Option<u64>) -> GeneratorLog {
        GeneratorLog::new(partitions, len, move |p, o, out| {
            out.extend_from_slice(&(o.0 * u64::from(partitions) + u64::from(p.0)).to_le_bytes());
        })
    }

    /// Decodes a record of [`GeneratorLog::numbers`].
    pub fn number(bytes: &[u8]) -> Result<u64> {
        let b: [u8; 8] = bytes.try_into().map_err(|_| {
            Error::decode("generated number", format!("{} bytes, not 8", bytes.len()))
        })?;
        Ok(u64::from_le_bytes(b))
    }
}

impl ReplayableLog for GeneratorLog {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn append_batch(&self, partition: PartitionId, _records: &[&[u8]]) -> Result<OffsetRange> {
        check_partition(partition, self.partitions)?;
        Err(Error::Config("a GeneratorLog is read-only".into()))
    }

    fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<RecordBatch> {
        let end = self.end_offset(partition)?;
        if from > end {
            return Err(Error::OffsetOutOfRange {
                partition,
                offset: from,
                start: LogOffset(0),
                end,
            });
        }
        let mut batch = RecordBatch::new(partition, from);
        let stop = from.0.saturating_add(max_records as u64).min(end.0);
        for o in from.0..stop {
            // Written in place: no copy per record.
            batch.push_with(|buf| {
                let start = buf.len();
                (self.make)(partition, LogOffset(o), &mut PayloadWriter { buf, start });
            });
        }
        Ok(batch)
    }

    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        check_partition(partition, self.partitions)?;
        Ok(LogOffset(0))
    }

    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        check_partition(partition, self.partitions)?;
        Ok(LogOffset(self.len.unwrap_or(u64::MAX / 2)))
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn truncate_before(&self, partition: PartitionId, _offset: LogOffset) -> Result<LogOffset> {
        self.start_offset(partition)
    }

    fn durability(&self) -> Durability {
        Durability::OnAppend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_cover_every_value_once_and_replay_identically() {
        let log = GeneratorLog::numbers(3, Some(4));
        let mut all = Vec::new();
        for p in 0..3 {
            let b = log.read(PartitionId(p), LogOffset(0), 100).expect("read");
            assert_eq!(
                b,
                log.read(PartitionId(p), LogOffset(0), 100).expect("again")
            );
            all.extend(
                b.iter()
                    .map(|(_, bytes)| GeneratorLog::number(bytes).expect("number")),
            );
        }
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        assert!(log.append(PartitionId(0), b"x").is_err());
        assert!(log.read(PartitionId(3), LogOffset(0), 1).is_err());
        assert!(log.read(PartitionId(0), LogOffset(5), 1).is_err());
    }

    #[test]
    fn records_of_any_length_written_in_place_read_back_each_as_written() {
        let log = GeneratorLog::new(1, Some(5), |_, o, out| {
            for _ in 0..o.0 {
                out.push(b'a' + o.0 as u8);
            }
            assert_eq!(out.len(), o.0 as usize);
        });
        let b = log.read(PartitionId(0), LogOffset(1), 10).expect("read");
        let got: Vec<_> = b.iter().map(|(o, p)| (o.0, p.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (1, b"b".to_vec()),
                (2, b"cc".to_vec()),
                (3, b"ddd".to_vec()),
                (4, b"eeee".to_vec())
            ]
        );
    }
}
