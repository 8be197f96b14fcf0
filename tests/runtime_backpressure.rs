//! Backpressure: a fast source into a slow sink keeps the records in flight under the bound the
//! configuration sets, whatever the speed difference.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snapflow::checkpoint::CheckpointId;
use snapflow::log::GeneratorLog;
use snapflow::prelude::*;
use snapflow::TwoPhaseCommitSink;

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
    let job = common::memory_job("backpressure", config);
    let numbers = GeneratorLog::numbers(1, Some(n));
    job.source(
        "fast",
        LogSource::with_decoder(Arc::new(numbers), GeneratorLog::number).bounded(),
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
    // One channel (source task -> sink task): at most `capacity` batches of `batch_size` in
    // the channel, plus the batch the sink is taking out of it (its slot is free for the
    // source before the sink has counted it as received).
    let bound = ((capacity + 1) * batch_size) as u64;
    let max = report.metrics.max_records_in_flight;
    assert!(
        max <= bound,
        "{max} records were in flight, above the bound of {bound}"
    );
    assert!(
        max >= (capacity * batch_size / 2) as u64,
        "the sink never fell behind ({max} in flight at most): the test proves nothing"
    );
}
