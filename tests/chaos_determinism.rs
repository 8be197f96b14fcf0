//! Reproducible chaos: the same seed gives the same events on one thread with a paused clock,
//! and the harness finds a sink that is not exactly-once.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use common::{check_updates, counting_log, keyed_job, Stage};
use snapflow::chaos::{first_divergent_seed, ChaosMonkey, Kill, Moment};
use snapflow::checkpoint::{CheckpointStorage, CheckpointTiming, MemoryCheckpointStorage};
use snapflow::prelude::*;
use snapflow::CollectSink;

fn deterministic_config() -> JobConfig {
    JobConfig {
        parallelism: 2,
        batch_size: 32,
        threads: Threads::Current,
        deterministic: true,
        checkpoints: CheckpointTiming::every(Duration::from_millis(2))
            .with_timeout(Duration::from_millis(500)),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(1),
            max_attempts: 1000,
        },
        ..JobConfig::default()
    }
}

/// Runs the seeded chaos job in a fresh System with tokio's clock paused; returns a hash of
/// its event trace and its exactness figures.
fn traced_run(seed: u64) -> (u64, usize, (u64, u64, u64)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (6_000, 12);
    let system = actix::System::new();
    let report = system.block_on(async {
        tokio::time::pause();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(
            MemoryCheckpointStorage::new("det")
                .expect("storage")
                .with_retain(1000),
        );
        let job = keyed_job(
            "det",
            deterministic_config(),
            storage,
            counting_log(n, keys, 2),
            &out,
            Stage::new(0),
        );
        job.chaos(
            ChaosMonkey::new(seed)
                .random_interval(Duration::from_millis(1), Duration::from_millis(4))
                .kills(vec![
                    Kill::PanicInUserCode,
                    Kill::StopFromOutside,
                    Kill::Coordinator,
                    Kill::At(Moment::DuringAlignment),
                    Kill::At(Moment::AfterCaptureBeforeAck),
                ])
                .max_kills(6),
        );
        common::run_to_end(job).await.expect("run")
    });
    let mut h = DefaultHasher::new();
    report.events.hash(&mut h);
    (
        h.finish(),
        report.events.len(),
        check_updates(&out, n, keys),
    )
}

#[test]
fn two_single_thread_runs_of_a_seeded_chaos_job_produce_the_same_event_trace() {
    for seed in [11u64, 12] {
        let (a, events, exact_a) = traced_run(seed);
        let (b, _, exact_b) = traced_run(seed);
        assert_eq!(a, b, "seed {seed}: the event traces differ");
        assert!(events > 10, "seed {seed}: only {events} events");
        assert_eq!(exact_a, (6_000, 0, 0), "seed {seed}");
        assert_eq!(exact_b, exact_a);
    }
}

/// Runs the keyed job into a sink that shows records before their checkpoint completes (a
/// deliberately planted at-least-once sink) and returns its output as a sorted list.
fn planted(seed: Option<u64>) -> Result<Vec<(u64, u64)>> {
    let sink = CollectSink::<(u64, u64)>::new();
    let config = common::chaos_config(Threads::Arbiters(2));
    let job = common::memory_job("planted", config);
    job.checkpoint_storage(Arc::new(MemoryCheckpointStorage::new("planted")?));
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(8_000, 10, 2)).bounded(),
    )
    .process("stage", Stage::new(100))
    .key_by(|(k, _): &(u64, u64)| *k)
    .reduce("sum", |a, b| (a.0, a.1 + b.1))
    .sink("planted", sink.clone());
    if let Some(seed) = seed {
        job.chaos(
            ChaosMonkey::new(seed)
                .every(Duration::from_millis(15))
                .kills(vec![Kill::StopFromOutside])
                .max_kills(3),
        );
    }
    job.build()?.run()?;
    let mut v = sink.records();
    v.sort_unstable();
    Ok(v)
}

#[test]
fn the_harness_finds_a_planted_non_exactly_once_sink() {
    let found = first_divergent_seed(0..10, planted).expect("runs");
    let d = found.expect("a seed whose output differs from the failure-free run");
    assert!(
        d.actual.len() > d.expected.len(),
        "the planted sink duplicates on replay (seed {})",
        d.seed
    );
}
