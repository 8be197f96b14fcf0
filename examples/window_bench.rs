//! Tumbling-window count throughput: 10 million events of 100 thousand keys, parallelism 2,
//! checkpoints every second. Prints events per second.
//!
//! Run: `cargo run --release --example window_bench [-- --events N] [-- --keys K]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snapflow::checkpoint::{CheckpointId, CheckpointTiming, LocalCheckpointStorage};
use snapflow::log::GeneratorLog;
use snapflow::prelude::*;
use snapflow::state::Aggregator;

#[derive(Clone)]
struct Count;

impl Aggregator for Count {
    type In = (u64, i64);
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _e: (u64, i64)) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

impl WindowAggregator for Count {
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
}

/// Counts the windows and the events they hold.
#[derive(Clone)]
struct Tally(Arc<(AtomicU64, AtomicU64)>);

impl TwoPhaseCommitSink<WindowResult<u64, u64>> for Tally {
    type Txn = ();
    fn begin(&mut self, _e: CheckpointId) -> Result<()> {
        Ok(())
    }
    fn write(&mut self, r: WindowResult<u64, u64>) -> Result<()> {
        self.0 .0.fetch_add(1, Ordering::Relaxed);
        self.0 .1.fetch_add(r.value, Ordering::Relaxed);
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

fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (events, keys) = (arg("--events", 10_000_000), arg("--keys", 100_000));
    let dir = std::env::temp_dir().join(format!("snapflow-window-bench-{}", std::process::id()));
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_secs(1)),
        ..JobConfig::default()
    };
    let tally = Tally(Arc::new((AtomicU64::new(0), AtomicU64::new(0))));
    let job = JobBuilder::with_config("window-bench", config);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(&dir, "window-bench")?));
    // Event i: key splitmix(i) % keys, time i / 10 ms (10 events per ms, in order per partition).
    let decode = move |b: &[u8]| -> Result<(u64, i64)> {
        let bytes: [u8; 8] = b
            .try_into()
            .map_err(|_| Error::Internal("8 bytes".into()))?;
        let i = u64::from_le_bytes(bytes);
        Ok((splitmix(i) % keys, (i / 10) as i64))
    };
    job.source(
        "events",
        LogSource::with_decoder(Arc::new(GeneratorLog::numbers(2, Some(events / 2))), decode)
            .bounded()
            .event_time(
                |e: &(u64, i64)| e.1,
                WatermarkStrategy::BoundedOutOfOrderness(100),
            ),
    )
    .key_by(|e: &(u64, i64)| e.0)
    .window(
        WindowAssigner::Tumbling { size: 60_000 },
        |e: &(u64, i64)| e.1,
    )
    .aggregate("count", Count)
    .sink("tally", tally.clone());
    let report = job.build()?.run()?;
    let _ = std::fs::remove_dir_all(&dir);
    let secs = report.elapsed.as_secs_f64();
    let counted = tally.0 .1.load(Ordering::Relaxed);
    println!(
        "window-bench tumbling-count events={events} keys={keys} p=2 ckpt=1000ms events_per_s={:.0} wall_s={secs:.2} windows={} checkpoints={} counted={counted}",
        events as f64 / secs,
        tally.0 .0.load(Ordering::Relaxed),
        report.checkpoints_completed,
    );
    if counted != events {
        println!("FAILED: the windows counted {counted} events, not {events}");
        std::process::exit(1);
    }
    Ok(())
}
