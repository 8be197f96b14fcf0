//! Backpressure: a fast source into a slow sink keeps the records in flight under the bound the
//! configuration sets, whatever the speed difference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snapflow::checkpoint::CheckpointId;
use snapflow::log::{Durability, OffsetRange, RecordBatch};
use snapflow::prelude::*;
use snapflow::TwoPhaseCommitSink;

/// A read-only log of `len` records per partition, made on the fly: record i is i (u64 LE).
#[derive(Debug)]
struct Synthetic {
    len: u64,
}

impl ReplayableLog for Synthetic {
    fn partitions(&self) -> u32 {
        1
    }
    fn append_batch(&self, _p: PartitionId, _r: &[&[u8]]) -> Result<OffsetRange> {
        Err(Error::Config("read-only".into()))
    }
    fn read(&self, p: PartitionId, from: LogOffset, max: usize) -> Result<RecordBatch> {
        let mut b = RecordBatch::new(p, from);
        for i in from.0..(from.0 + max as u64).min(self.len) {
            b.push(&i.to_le_bytes());
        }
        Ok(b)
    }
    fn start_offset(&self, _p: PartitionId) -> Result<LogOffset> {
        Ok(LogOffset(0))
    }
    fn end_offset(&self, _p: PartitionId) -> Result<LogOffset> {
        Ok(LogOffset(self.len))
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn truncate_before(&self, _p: PartitionId, _o: LogOffset) -> Result<LogOffset> {
        Ok(LogOffset(0))
    }
    fn durability(&self) -> Durability {
        Durability::Volatile
    }
}

/// Counts records and checks their order, pausing 1 ms every 20,000 records.
#[derive(Clone)]
struct SlowCount {
    count: Arc<AtomicU64>,
    next: u64,
}

impl TwoPhaseCommitSink<u64> for SlowCount {
    type Txn = ();
    fn begin(&mut self, _e: CheckpointId) -> Result<()> {
        Ok(())
    }
    fn write(&mut self, x: u64) -> Result<()> {
        if x != self.next {
            return Err(Error::Internal(format!(
                "record {x} arrived where {} belongs",
                self.next
            )));
        }
        self.next += 1;
        if self.count.fetch_add(1, Ordering::Relaxed) % 20_000 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
    fn pre_commit(&mut self, _e: CheckpointId) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self, _t: &()) -> Result<()> {
        Ok(())
    }
    fn recover(&mut self, _c: &[()]) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_fast_source_into_a_slow_sink_keeps_records_in_flight_under_the_bound() {
    let n = 10_000_000u64;
    let (batch_size, capacity) = (1024usize, 4usize);
    let config = JobConfig {
        parallelism: 1,
        batch_size,
        channel_capacity: capacity,
        threads: Threads::Arbiters(2),
        ..JobConfig::default()
    };
    let count = Arc::new(AtomicU64::new(0));
    let job = JobBuilder::with_config("backpressure", config);
    let decode = |b: &[u8]| -> Result<u64> {
        let bytes: [u8; 8] = b
            .try_into()
            .map_err(|_| Error::Internal("8 bytes".into()))?;
        Ok(u64::from_le_bytes(bytes))
    };
    job.source(
        "fast",
        LogSource::with_decoder(Arc::new(Synthetic { len: n }), decode).bounded(),
    )
    .sink(
        "slow",
        SlowCount {
            count: Arc::clone(&count),
            next: 0,
        },
    );
    let report = job.build().expect("build").run().expect("run");
    assert_eq!(
        count.load(Ordering::Relaxed),
        n,
        "every record arrived, in order"
    );
    // One channel (source task -> sink task): at most `capacity` batches of `batch_size`.
    let bound = (capacity * batch_size) as u64;
    let max = report.metrics.max_records_in_flight;
    assert!(
        max <= bound,
        "{max} records were in flight, above the bound of {bound}"
    );
    assert!(
        max >= bound / 2,
        "the sink never fell behind ({max} in flight at most): the test proves nothing"
    );
}
