//! Restart strategies, fallback past a corrupt checkpoint, isolation between jobs, and
//! failover regions.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{chaos_config, check_updates, counting_log, keyed_job, Stage};
use snapflow::chaos::{ChaosMonkey, Kill, Moment};
use snapflow::checkpoint::TaskId;
use snapflow::checkpoint::{CheckpointStorage, LocalCheckpointStorage};
use snapflow::prelude::*;
use snapflow::{FileSink, JobEvent};

/// Panics on every record.
#[derive(Clone)]
struct AlwaysPanics;

impl Operator<(u64, u64), (u64, u64)> for AlwaysPanics {
    fn process(
        &mut self,
        _r: (u64, u64),
        _ctx: &mut OperatorContext<'_>,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        panic!("this record always fails");
    }
}

fn failing_job(name: &str, restart: RestartStrategy, threads: Threads) -> Job {
    let mut config = chaos_config(threads);
    config.restart = restart;
    config.job_restart = RestartStrategy::Never;
    let job = common::memory_job(name, config);
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(100, 5, 2)).bounded(),
    )
    .process("boom", AlwaysPanics)
    .sink("sink", snapflow::CollectSink::new());
    job.build().expect("build")
}

fn restarts_before_giving_up(restart: RestartStrategy) -> (usize, Error) {
    let events = Arc::new(Mutex::new(Vec::new()));
    struct Rec(Arc<Mutex<Vec<JobEvent>>>);
    impl actix::Actor for Rec {
        type Context = actix::Context<Self>;
    }
    impl actix::Handler<JobEvent> for Rec {
        type Result = ();
        fn handle(&mut self, e: JobEvent, _: &mut actix::Context<Self>) {
            self.0.lock().expect("lock").push(e);
        }
    }
    let sys = actix::System::new();
    let err = sys.block_on({
        let events = Arc::clone(&events);
        async move {
            use actix::Actor;
            let rec = Rec(events).start();
            let mut config = chaos_config(Threads::Current);
            config.restart = restart;
            // The region's strategy alone: no full restarts of the job after it gives up.
            config.job_restart = RestartStrategy::Never;
            let job = common::memory_job("strategy", config);
            job.events(rec.recipient());
            job.source(
                "source",
                LogSource::<(u64, u64)>::msgpack(counting_log(100, 5, 2)).bounded(),
            )
            .process("boom", AlwaysPanics)
            .sink("sink", snapflow::CollectSink::new());
            let r = common::run_to_end(job).await;
            actix::clock::sleep(Duration::from_millis(20)).await; // let the recorder drain
            r.expect_err("the strategy must give up")
        }
    });
    // Each failover region (one per slice) has its own budget: the region that gave up used
    // all of its own, and no region used more.
    let mut per_region: BTreeMap<Vec<TaskId>, usize> = BTreeMap::new();
    for e in events.lock().expect("lock").iter() {
        if let JobEvent::Restarting { tasks, .. } = e {
            *per_region.entry(tasks.clone()).or_insert(0) += 1;
        }
    }
    let restarts = per_region.values().copied().max().unwrap_or(0);
    (restarts, err)
}

/// True for the operator's panic, whatever context wraps it (task, record position, the
/// restarts given up).
fn is_the_panic(e: &Error) -> bool {
    match e {
        Error::InTask { source, .. }
        | Error::AtRecord { source, .. }
        | Error::RestartsExhausted { source, .. } => is_the_panic(source),
        Error::Panic { message } => message.contains("always fails"),
        _ => false,
    }
}

#[test]
fn restart_strategy_limits_end_the_job_with_the_error() {
    let ms = Duration::from_millis(1);
    let (n, e) = restarts_before_giving_up(RestartStrategy::FixedDelay {
        delay: ms,
        max_attempts: 3,
    });
    assert_eq!(n, 3, "fixed delay: {e}");
    assert!(is_the_panic(&e), "{e}");
    let backoff = RestartStrategy::ExponentialBackoff {
        initial: ms,
        max: 4 * ms,
        multiplier: 2.0,
        jitter: 0.1,
        reset_after: Duration::from_secs(3600),
        max_attempts: 4,
    };
    let (n, e) = restarts_before_giving_up(backoff);
    assert_eq!(n, 4, "backoff: {e}");
    assert!(is_the_panic(&e), "{e}");
    let rate = RestartStrategy::FailureRate {
        max_failures: 2,
        window: Duration::from_secs(60),
        delay: ms,
    };
    let (n, e) = restarts_before_giving_up(rate);
    assert_eq!(n, 2, "failure rate: {e}");
    assert!(is_the_panic(&e), "{e}");
    let (n, e) = restarts_before_giving_up(RestartStrategy::Never);
    assert_eq!(n, 0, "never: {e}");
}

#[actix_rt::test]
async fn a_panicking_job_leaves_a_second_job_in_the_same_system_running_and_correct() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (20_000, 10);
    let bad = failing_job("bad", RestartStrategy::Never, Threads::Current)
        .start()
        .await
        .expect("start bad");
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(snapflow::checkpoint::MemoryCheckpointStorage::new("good").expect("storage"));
    let good = keyed_job(
        "good",
        chaos_config(Threads::Current),
        storage,
        counting_log(n, keys, 2),
        &out,
        Stage::new(0),
    )
    .build()
    .expect("build")
    .start()
    .await
    .expect("start good");
    let bad = bad.wait().await.expect_err("the panicking job fails");
    assert!(is_the_panic(&bad), "{bad}");
    let good = good.wait().await.expect("the other job finishes");
    assert_eq!(good.restarts, 0);
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}

#[actix_rt::test]
async fn the_newest_checkpoint_corrupted_on_disk_falls_back_and_output_stays_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (40_000, 10);
    let log = counting_log(n, keys, 2);
    let local = || -> Arc<dyn CheckpointStorage> {
        Arc::new(
            LocalCheckpointStorage::new(dir.path().join("chk"), "fallback")
                .expect("storage")
                .with_retain(100),
        )
    };
    let build = |config: JobConfig| {
        let job = common::memory_job("fallback", config);
        job.checkpoint_storage(local());
        job.source(
            "source",
            LogSource::<(u64, u64)>::msgpack(Arc::clone(&log)).bounded(),
        )
        .process("stage", Stage::new(100))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink(
            "sink",
            FileSink::new(&out, |(k, c): &(u64, u64), l: &mut String| {
                l.push_str(&format!("{k} {c}"))
            }),
        )
        .sink_parallelism(1);
        job
    };
    // Run 1: the only sink task dies after checkpoint n completes, before it commits n, and
    // the job gives up.
    let mut config = chaos_config(Threads::Arbiters(2));
    config.restart = RestartStrategy::Never;
    config.job_restart = RestartStrategy::Never;
    let job = build(config.clone());
    // Armed after 60 ms (several 10 ms checkpoints have completed by then); it fires at the
    // next checkpoint completion, long before the input ends.
    job.chaos(
        ChaosMonkey::new(3)
            .every(Duration::from_millis(60))
            .kills(vec![Kill::At(Moment::BetweenPreCommitAndCommit)])
            .max_kills(1),
    );
    let first = common::run_to_end(job).await;
    let err = first.expect_err("the kill ends the first run");
    assert!(
        err.to_string().contains("BetweenPreCommitAndCommit"),
        "{err}"
    );
    // Corrupt the newest checkpoint on disk.
    let storage = local();
    let ids = storage.completed_ids().expect("ids");
    assert!(ids.len() >= 2, "need two checkpoints, got {ids:?}");
    let newest = *ids.last().expect("newest");
    let chk = dir
        .path()
        .join("chk")
        .join("fallback")
        .join(format!("chk-{:020}", newest.0));
    let victim = std::fs::read_dir(&chk)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("task-sum"))
        .expect("a state file");
    let mut bytes = std::fs::read(&victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&victim, &bytes).expect("corrupt");
    // Run 2 falls back to the checkpoint before it and finishes exactly once.
    let report = build(chaos_config(Threads::Arbiters(2)))
        .build()
        .expect("build")
        .start()
        .await
        .expect("start")
        .wait()
        .await
        .expect("second run");
    assert_eq!(
        report.restored_from,
        Some(ids[ids.len() - 2]),
        "fell back to the previous checkpoint"
    );
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}

#[actix_rt::test]
async fn a_forward_pipeline_failure_restarts_only_its_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (20_000u64, 7u64);
    let opened = Arc::new(Mutex::new(Vec::new()));
    let mut stage = Stage::new(100);
    stage.opened = Some(Arc::clone(&opened));
    let job = common::memory_job("forward", chaos_config(Threads::Arbiters(2)));
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(n, keys, 2)).bounded(),
    )
    .process("stage", stage)
    .sink(
        "sink",
        FileSink::new(&out, |(k, _): &(u64, u64), l: &mut String| {
            l.push_str(&k.to_string())
        }),
    );
    job.chaos(
        ChaosMonkey::new(5)
            .every(Duration::from_millis(20))
            .kills(vec![Kill::PanicInUserCode])
            .only_vertices(&["stage"])
            .max_kills(1),
    );
    let report = common::run_to_end(job).await.expect("run");
    assert_eq!(report.restarts, 1, "{:?}", report.events);
    let restarted: Vec<TaskId> = report
        .events
        .iter()
        .find_map(|e| match e {
            JobEvent::Restarting { tasks, .. } => Some(tasks.clone()),
            _ => None,
        })
        .expect("a restart");
    assert_eq!(
        restarted.len(),
        3,
        "one slice: its source, stage and sink: {restarted:?}"
    );
    let failed = restarted[0].index;
    assert!(restarted.iter().all(|t| t.index == failed), "{restarted:?}");
    let opens = opened.lock().expect("lock").clone();
    assert_eq!(
        opens.iter().filter(|i| **i == failed).count(),
        2,
        "the failed slice started twice: {opens:?}"
    );
    assert_eq!(
        opens.iter().filter(|i| **i != failed).count(),
        1,
        "the other slice kept its actors: {opens:?}"
    );
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for l in FileSink::<u64>::read_committed(&out).expect("read") {
        *counts.entry(l.parse().expect("key")).or_insert(0) += 1;
    }
    let expected: BTreeMap<u64, u64> = (0..keys)
        .map(|k| (k, n / keys + u64::from(k < n % keys)))
        .collect();
    assert_eq!(counts, expected, "every record exactly once");
}

#[actix_rt::test]
async fn a_task_failing_while_the_job_starts_is_restarted_once_and_output_stays_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (20_000, 7);
    let job = common::memory_job("open-fails", chaos_config(Threads::Arbiters(2)));
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(n, keys, 2)).bounded(),
    )
    .process("open-fails", {
        // Task 0 fails in `open` once; task 1's `open` is slow, so the failure is reported
        // while the job's other tasks are still starting.
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        common::PassThrough {
            on_open: Arc::new(move |index| match index {
                0 if !failed.swap(true, std::sync::atomic::Ordering::SeqCst) => {
                    Err(Error::Internal("open failed once".into()))
                }
                1 => {
                    std::thread::sleep(Duration::from_millis(150));
                    Ok(())
                }
                _ => Ok(()),
            }),
        }
    })
    .key_by(|(k, _): &(u64, u64)| *k)
    .reduce("sum", |a, b| (a.0, a.1 + b.1))
    .sink(
        "sink",
        FileSink::new(&out, |(k, c): &(u64, u64), l: &mut String| {
            l.push_str(&format!("{k} {c}"))
        }),
    );
    let report = common::run_to_end(job)
        .await
        .expect("the job recovers and ends");
    assert_eq!(report.restarts, 1, "{:?}", report.events);
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}
