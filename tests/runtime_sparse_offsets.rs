//! Sources of logs whose offsets have gaps (Kafka's: transaction markers, aborted records,
//! compaction): record `i` of a partition sits at offset `3i + 1`, the two offsets after it
//! hold nothing, and a read that finds only such offsets moves on without a record.

mod common;

use std::sync::Arc;

use snapflow::log::{Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog};
use snapflow::prelude::*;
use snapflow::Result;

use common::{chaos_config, check_updates, count_sink, counting_log, Stage};

/// `inner`'s records at offsets `3i + 1`; its end at `3n + 1`.
#[derive(Debug)]
struct SparseLog {
    inner: Arc<dyn ReplayableLog>,
}

fn outer(i: u64) -> LogOffset {
    LogOffset(3 * i + 1)
}

impl ReplayableLog for SparseLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }

    fn append_batch(&self, partition: PartitionId, records: &[&[u8]]) -> Result<OffsetRange> {
        let r = self.inner.append_batch(partition, records)?;
        Ok(OffsetRange {
            start: outer(r.start.0),
            end: outer(r.end.0),
        })
    }

    fn read(&self, partition: PartitionId, from: LogOffset, max: usize) -> Result<RecordBatch> {
        // The first record at or after `from`.
        let i = from.0.saturating_sub(1).div_ceil(3);
        let inner = self.inner.read(partition, LogOffset(i), max)?;
        let mut batch = RecordBatch::new(partition, from);
        for (o, bytes) in inner.iter() {
            batch.push_at(outer(o.0), bytes)?;
        }
        if batch.is_empty() {
            // Only empty offsets ahead: the position moves to where the next record will be.
            batch.set_next_offset(outer(inner.next_offset().0));
        }
        Ok(batch)
    }

    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(outer(self.inner.start_offset(partition)?.0))
    }

    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(outer(self.inner.end_offset(partition)?.0))
    }

    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    fn truncate_before(&self, partition: PartitionId, offset: LogOffset) -> Result<LogOffset> {
        let i = offset.0.saturating_sub(1) / 3;
        Ok(outer(
            self.inner.truncate_before(partition, LogOffset(i))?.0,
        ))
    }

    fn durability(&self) -> Durability {
        self.inner.durability()
    }
}

#[test]
fn a_sparse_log_gives_each_record_its_own_offset_and_moves_past_empty_offsets() {
    let log = SparseLog {
        inner: counting_log(10, 3, 1),
    };
    let b = log.read(PartitionId(0), LogOffset(0), 4).expect("read");
    let offsets: Vec<u64> = b.iter().map(|(o, _)| o.0).collect();
    assert_eq!(offsets, vec![1, 4, 7, 10]);
    assert!(!b.is_dense());
    assert_eq!(b.next_offset(), LogOffset(11));
    let b = log.read(PartitionId(0), LogOffset(11), 100).expect("read");
    assert_eq!(b.iter().next().map(|(o, _)| o.0), Some(13));
    let end = log.end_offset(PartitionId(0)).expect("end");
    let last = log.read(PartitionId(0), LogOffset(29), 10).expect("read");
    assert!(last.is_empty());
    assert_eq!(last.next_offset(), end, "an empty read moves to the end");
}

/// A bounded keyed job on a log with gaps under chaos kills: checkpoints record the sparse
/// offsets, restores seek to them, the source stops at the end offset although the last
/// offsets hold no record, and the committed output is exact.
#[test]
fn a_source_of_a_log_with_gaps_in_its_offsets_is_exactly_once_under_kills_and_ends() {
    let mut kills = 0;
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let (n, keys) = (8_000, 20);
        let log: Arc<dyn ReplayableLog> = Arc::new(SparseLog {
            inner: counting_log(n, keys, 2),
        });
        let name = format!("sparse-{seed}");
        let job = JobBuilder::with_config(&name, chaos_config(Threads::Arbiters(2)));
        job.checkpoint_in_memory();
        job.source("source", LogSource::<(u64, u64)>::msgpack(log).bounded())
            .process("stage", Stage::new(150))
            .key_by(|(k, _): &(u64, u64)| *k)
            .reduce("sum", |a, b| (a.0, a.1 + b.1))
            .sink("sink", count_sink(&out));
        let report = common::run_under_kills(job, seed, 5, 25);
        assert_eq!(
            check_updates(&out, n, keys),
            (n, 0, 0),
            "seed {seed}: {:?}",
            report.events
        );
        kills += report.kills;
    }
    assert!(kills >= 4, "only {kills} kills over 4 seeds");
}
