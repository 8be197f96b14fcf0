//! Async calls from operators: results counted exactly once in ordered and unordered mode
//! while calls are in flight at barriers and kills strike at random; the capacity bound;
//! requests in flight at a stop issued again on resume; retries and the timeout callback.
//!
//! Seeds: `SNAPFLOW_ACTOR_SEEDS` (default 20) runs per mode; a failure prints its seed.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::prelude::*;
use snapflow::{AsyncFunction, AsyncMode, AsyncOptions, MemoryCheckpointStorage};

use common::{chaos_config, check_updates, counting_log, run_to_end, splitmix};

/// Answers `(k, v)` with itself after a delay drawn from the record (0-2 ms), counting calls
/// and the most calls in flight at once.
#[derive(Clone, Default)]
struct Delayed {
    calls: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    salt: u64,
}

impl AsyncFunction<(u64, u64), (u64, u64)> for Delayed {
    fn call(&self, input: &(u64, u64)) -> LocalBoxFuture<'static, Result<Vec<(u64, u64)>>> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let mut r = n ^ self.salt;
        let delay = Duration::from_micros(splitmix(&mut r) % 2_000);
        let (record, in_flight) = (*input, InFlight(Arc::clone(&self.in_flight)));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            drop(in_flight);
            Ok(vec![record])
        })
    }
}

/// Counts a call as in flight until its future ends or is dropped (aborted with its task).
struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

const CAPACITY: usize = 32;

fn async_job(
    name: &str,
    config: JobConfig,
    log: Arc<dyn ReplayableLog>,
    f: Delayed,
    mode: AsyncMode,
    out: &std::path::Path,
) -> JobBuilder {
    let job = common::memory_job(name, config);
    job.source("source", LogSource::<(u64, u64)>::msgpack(log).bounded())
        .async_map("enrich", f, AsyncOptions::new(mode, CAPACITY))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", common::count_sink(out));
    job
}

async fn chaos_run(seed: u64, mode: AsyncMode) -> (u32, u64) {
    const N: u64 = 10_000;
    const KEYS: u64 = 11;
    let dir = tempfile::tempdir().expect("tempdir");
    let f = Delayed {
        salt: seed,
        ..Delayed::default()
    };
    let job = async_job(
        "async",
        chaos_config(Threads::Arbiters(2)),
        counting_log(N, KEYS, 2),
        f.clone(),
        mode,
        dir.path(),
    );
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(40), Duration::from_millis(120))
            .kills(vec![Kill::PanicInUserCode, Kill::StopFromOutside])
            .max_kills(4),
    );
    let report = run_to_end(job)
        .await
        .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: {e}"));
    let (_, lost, duplicated) = check_updates(dir.path(), N, KEYS);
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "seed {seed} {mode:?}: lost or duplicated results"
    );
    let max = f.max_in_flight.load(Ordering::Relaxed);
    // Two tasks, each with at most CAPACITY calls (a dead incarnation's calls are aborted).
    assert!(
        max <= 2 * CAPACITY as u64 + CAPACITY as u64,
        "seed {seed}: {max} calls in flight"
    );
    (report.kills, f.calls.load(Ordering::Relaxed) - N)
}

#[actix::test]
async fn async_results_count_exactly_once_in_ordered_and_unordered_mode_under_random_kills() {
    snapflow::chaos::quiet_chaos_panics();
    for mode in [AsyncMode::Ordered, AsyncMode::Unordered] {
        let (mut kills, mut again) = (0, 0);
        for i in 0..common::seeds(20) {
            let (k, a) = chaos_run(0xA5_0000 + i, mode).await;
            kills += k;
            again += a;
        }
        eprintln!("{mode:?}: {kills} kills, {again} calls issued again");
        assert!(
            kills > 0 && again > 0,
            "{mode:?}: the runs were not disturbed"
        );
    }
}

/// Answers after `delay`; counts calls.
#[derive(Clone, Default)]
struct Slow {
    calls: Arc<AtomicU64>,
    delay: Duration,
}

impl AsyncFunction<(u64, u64), (u64, u64)> for Slow {
    fn call(&self, input: &(u64, u64)) -> LocalBoxFuture<'static, Result<Vec<(u64, u64)>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (record, delay) = (*input, self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(vec![record])
        })
    }
}

#[actix::test]
async fn calls_in_flight_at_a_stop_are_in_its_checkpoint_and_issued_again_on_resume() {
    const N: u64 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(MemoryCheckpointStorage::new("resume").expect("storage"));
    let log = counting_log(N, 7, 1);
    let build = |f: Slow| {
        let mut config = chaos_config(Threads::Arbiters(1));
        config.parallelism = 1;
        let job = common::memory_job("resume", config);
        job.checkpoint_storage(Arc::clone(&storage));
        job.source(
            "source",
            LogSource::<(u64, u64)>::msgpack(Arc::clone(&log)).bounded(),
        )
        .async_map("enrich", f, AsyncOptions::new(AsyncMode::Unordered, 50))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", common::count_sink(dir.path()));
        job
    };
    // Calls take 3 s: when the stop's final barrier passes the operator (right after it took
    // the last record), calls are in flight, and their results are not in that epoch. (With
    // 300 ms, a loaded CI machine once completed every call before the stop's barrier.)
    let slow = Slow {
        delay: Duration::from_millis(3000),
        ..Slow::default()
    };
    let handle = build(slow.clone())
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let busy = common::poll_until(Duration::from_secs(10), || {
        slow.calls.load(Ordering::Relaxed) >= 50
    })
    .await;
    assert!(busy, "the calls never started");
    handle.stop();
    handle.wait().await.expect("stopped with calls in flight");
    let called = slow.calls.load(Ordering::Relaxed);
    let (done, lost, duplicated) = check_updates(dir.path(), N, 7);
    assert_eq!((lost + done, duplicated), (N, 0));
    assert!(
        called > done,
        "no call was in flight at the final barrier ({called} calls, {done} results)"
    );

    let fast = Slow::default();
    run_to_end(build(fast.clone())).await.expect("resumed run");
    let (_, lost, duplicated) = check_updates(dir.path(), N, 7);
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "in-flight calls were lost or repeated"
    );
    assert_eq!(
        fast.calls.load(Ordering::Relaxed),
        N - done,
        "the resumed run called exactly the inputs whose results were not committed"
    );
}

/// Fails the first try of every tenth input, never answers every fiftieth.
#[derive(Clone, Default)]
struct Flaky {
    failed_once: Arc<Mutex<HashSet<(u64, u64)>>>,
    seq: Arc<AtomicU64>,
}

impl AsyncFunction<(u64, u64), (u64, u64)> for Flaky {
    fn call(&self, input: &(u64, u64)) -> LocalBoxFuture<'static, Result<Vec<(u64, u64)>>> {
        let (k, i) = *input;
        let first = self.failed_once.lock().expect("set").insert(*input);
        Box::pin(async move {
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if i % 10 == 0 && first {
                return Err(Error::Unavailable {
                    what: "the flaky service".into(),
                    reason: "first try".into(),
                });
            }
            Ok(vec![(k, 1)])
        })
    }

    fn timeout(&self, input: &(u64, u64)) -> Result<Vec<(u64, u64)>> {
        self.seq.fetch_add(1, Ordering::Relaxed);
        Ok(vec![(input.0 + 1_000, 1)])
    }
}

#[actix::test]
async fn failed_calls_are_retried_and_timed_out_ones_answered_by_the_callback() {
    const N: u64 = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    // Records (0, i): `i` makes each input distinct.
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    for i in 0..N {
        typed.append(PartitionId(0), &(0, i)).expect("append");
    }
    let f = Flaky::default();
    let job = common::memory_job("flaky", chaos_config(Threads::Arbiters(1)));
    let options = AsyncOptions::new(AsyncMode::Unordered, 100)
        .timeout(Duration::from_millis(50))
        .retries(1, Duration::from_millis(1));
    job.source("source", LogSource::<(u64, u64)>::msgpack(log).bounded())
        .async_map("enrich", f.clone(), options)
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", common::count_sink(dir.path()));
    run_to_end(job).await.expect("run");
    let lines = FileSink::<(u64, u64)>::read_committed(dir.path()).expect("output");
    let last = |key: &str| {
        lines
            .iter()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| *k == key)
            .map(|(_, c)| c.parse::<u64>().expect("count"))
            .max()
    };
    assert_eq!(last("0"), Some(N - N / 50), "retried calls lost");
    assert_eq!(
        last("1000"),
        Some(N / 50),
        "timed-out calls not answered by the callback"
    );
    assert_eq!(f.seq.load(Ordering::Relaxed), N / 50);
}

#[actix::test]
async fn async_results_reach_an_event_time_window_before_the_watermark_passes_them() {
    const N: u64 = 3_000;
    // Records (key, timestamp), timestamps ascending; no disorder allowed, no lateness.
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    let records: Vec<(u64, u64)> = (0..N).map(|i| (i % 3, i)).collect();
    typed
        .append_batch(PartitionId(0), &records)
        .expect("append");
    let out = CollectSink::new();
    let mut config = chaos_config(Threads::Arbiters(1));
    config.parallelism = 1;
    let job = common::memory_job("async-windows", config);
    job.source(
        "events",
        LogSource::<(u64, u64)>::msgpack(log).bounded().event_time(
            |r: &(u64, u64)| r.1 as i64,
            WatermarkStrategy::BoundedOutOfOrderness(0),
        ),
    )
    .async_map(
        "enrich",
        Delayed::default(),
        AsyncOptions::new(AsyncMode::Unordered, CAPACITY),
    )
    .key_by(|r: &(u64, u64)| r.0)
    .window(WindowAssigner::Tumbling { size: 100 }, |r: &(u64, u64)| {
        r.1 as i64
    })
    .reduce("sums", |a, b| (a.0, a.1 + b.1))
    .sink("out", out.clone());
    run_to_end(job).await.expect("run");
    let results = out.records();
    let total: u64 = results.iter().map(|w| w.value.1).sum();
    assert_eq!(
        total,
        (0..N).sum::<u64>(),
        "results arrived after their window closed"
    );
    assert_eq!(
        results.len() as u64,
        3 * N / 100,
        "one result per key and window"
    );
}
