//! Checkpoint timeouts, checkpoints at start-up, and the actor sink's release rule.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use common::{poll_until, FaultyStorage};
use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, CheckpointTiming, MemoryCheckpointStorage,
};
use snapflow::prelude::*;
use snapflow::{ActorSink, CollectSink, SinkOutput};

fn keyed_log(n: u64, partitions: u32) -> Arc<dyn ReplayableLog> {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(partitions));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    for i in 0..n {
        typed
            .append(
                PartitionId((i % u64::from(partitions)) as u32),
                &(i % 10, 1),
            )
            .expect("append");
    }
    log
}

fn timing(interval_ms: u64, timeout_ms: u64) -> CheckpointTiming {
    CheckpointTiming::every(Duration::from_millis(interval_ms))
        .with_timeout(Duration::from_millis(timeout_ms))
}

#[actix_rt::test]
async fn a_timed_out_checkpoint_is_aborted_and_the_next_completes() {
    let inner: Arc<dyn CheckpointStorage> = Arc::new(
        MemoryCheckpointStorage::new("timeout")
            .expect("storage")
            .with_retain(1000),
    );
    let mut faulty = FaultyStorage::new(Arc::clone(&inner));
    // Checkpoint 1's state writes take 400 ms; the timeout is 100 ms.
    faulty.delay_write = Some((
        Box::new(|id| id == CheckpointId(1)),
        Duration::from_millis(400),
    ));
    let config = JobConfig {
        parallelism: 2,
        checkpoints: timing(10, 100),
        ..JobConfig::default()
    };
    let job = common::memory_job("timeout", config);
    job.checkpoint_storage(Arc::new(faulty));
    job.source(
        "src",
        LogSource::<(u64, u64)>::msgpack(keyed_log(10_000, 2)),
    )
    .map("id", |r: (u64, u64)| r)
    .sink("out", CollectSink::new());
    let handle = job.build().expect("build").start().await.expect("start");
    let done = poll_until(Duration::from_secs(20), || {
        let m = handle.metrics();
        m.checkpoints_aborted >= 1 && m.checkpoints.iter().any(|c| c.id >= CheckpointId(2))
    })
    .await;
    let m = handle.metrics();
    handle.stop();
    let report = handle.wait().await.expect("graceful stop");
    assert!(done, "no abort and later completion within 20 s: {m:?}");
    let completed = inner.completed_ids().expect("ids");
    assert!(
        !completed.contains(&CheckpointId(1)),
        "checkpoint 1 timed out and must not complete: {completed:?}"
    );
    assert!(
        completed.iter().any(|c| *c >= CheckpointId(2)),
        "{completed:?}"
    );
    assert!(report.metrics.checkpoints_aborted >= 1);
}

#[actix_rt::test]
async fn no_checkpoint_is_triggered_before_every_task_has_started() {
    // The coordinator's interval (2 ms) elapses many times while the tasks open (150 ms). A
    // checkpoint triggered then would reach sources not yet registered and hang until its
    // timeout: the job must hold checkpoints until it has started, and never abort one.
    let config = JobConfig {
        parallelism: 2,
        threads: Threads::Arbiters(2),
        checkpoints: timing(2, 3_000),
        ..JobConfig::default()
    };
    let job = common::memory_job("slow-open", config);
    job.checkpoint_storage(Arc::new(
        MemoryCheckpointStorage::new("slow-open").expect("storage"),
    ));
    job.source(
        "src",
        LogSource::<(u64, u64)>::msgpack(keyed_log(20_000, 2)).bounded(),
    )
    .process(
        "slow-open",
        common::PassThrough {
            // A large restore, a connection to set up.
            on_open: Arc::new(|_| {
                std::thread::sleep(Duration::from_millis(150));
                Ok(())
            }),
        },
    )
    .sink("out", CollectSink::new());
    let report = common::run_to_end(job).await.expect("run");
    assert_eq!(
        report.metrics.checkpoints_aborted, 0,
        "a checkpoint triggered during start-up was aborted: {:?}",
        report.metrics.checkpoints
    );
    assert!(
        report.elapsed < Duration::from_millis(2_500),
        "the job waited for a checkpoint timeout: {:?}",
        report.elapsed
    );
}

/// Checks every output against the storage: its epoch must be complete when it arrives.
struct Receiver {
    storage: Arc<dyn CheckpointStorage>,
    early: Arc<Mutex<Vec<(u64, u64)>>>,
    seen: HashSet<(u64, u32, u64)>,
    latest: Arc<Mutex<HashMap<u64, u64>>>,
}

impl Actor for Receiver {
    type Context = Context<Self>;
}

impl Handler<SinkOutput<(u64, u64)>> for Receiver {
    type Result = ();

    fn handle(&mut self, out: SinkOutput<(u64, u64)>, _ctx: &mut Context<Self>) {
        let newest = self
            .storage
            .completed_ids()
            .ok()
            .and_then(|ids| ids.last().copied());
        if newest.is_none_or(|n| n < out.epoch) {
            self.early
                .lock()
                .expect("lock")
                .push((out.epoch.0, newest.map(|n| n.0).unwrap_or(0)));
        }
        if self.seen.insert((out.epoch.0, out.task, out.seq)) {
            let (k, c) = out.value;
            let mut latest = self.latest.lock().expect("lock");
            let e = latest.entry(k).or_insert(0);
            *e = (*e).max(c);
        }
    }
}

#[actix_rt::test]
async fn the_actor_sink_never_releases_an_uncommitted_epoch() {
    let inner: Arc<dyn CheckpointStorage> = Arc::new(
        MemoryCheckpointStorage::new("release")
            .expect("storage")
            .with_retain(1000),
    );
    let mut faulty = FaultyStorage::new(Arc::clone(&inner));
    // Every third manifest write fails, starting with the first (so the failure path is taken
    // however few checkpoints a fast run holds): those epochs wait for a later checkpoint.
    faulty.fail_commit = Some(Box::new(|id| id.0 % 3 == 1));
    let early = Arc::new(Mutex::new(Vec::new()));
    let latest = Arc::new(Mutex::new(HashMap::new()));
    let receiver = Receiver {
        storage: Arc::clone(&inner),
        early: Arc::clone(&early),
        seen: HashSet::new(),
        latest: Arc::clone(&latest),
    }
    .start();
    let config = JobConfig {
        parallelism: 2,
        batch_size: 64,
        checkpoints: timing(2, 10_000),
        ..JobConfig::default()
    };
    let job = common::memory_job("release", config);
    job.checkpoint_storage(Arc::new(faulty));
    job.source(
        "src",
        LogSource::<(u64, u64)>::msgpack(keyed_log(100_000, 2)).bounded(),
    )
    .key_by(|(k, _): &(u64, u64)| *k)
    .reduce("sum", |a, b| (a.0, a.1 + b.1))
    .sink("to-actor", ActorSink::new(receiver.recipient()));
    let report = common::run_to_end(job).await.expect("run");
    assert!(
        report.metrics.checkpoints_aborted >= 1,
        "the failure path was not exercised: {:?}",
        report.metrics
    );
    // Let the receiver drain its mailbox.
    assert!(
        poll_until(Duration::from_secs(5), || latest
            .lock()
            .expect("lock")
            .values()
            .sum::<u64>()
            == 100_000)
        .await
    );
    let early = early.lock().expect("lock").clone();
    assert!(
        early.is_empty(),
        "outputs released before their epoch completed (epoch, newest complete): {early:?}"
    );
    let latest = latest.lock().expect("lock").clone();
    assert_eq!(
        latest,
        (0..10).map(|k| (k, 10_000)).collect::<HashMap<u64, u64>>()
    );
}

/// The keyed count of `trim_log_runs`, reading `log` (trimmed by the job).
fn trimming_job(
    storage: &Arc<dyn CheckpointStorage>,
    log: &Arc<dyn ReplayableLog>,
    out: &std::path::Path,
    bounded: bool,
) -> JobBuilder {
    let mut config = JobConfig {
        parallelism: 1,
        ..JobConfig::default()
    };
    config.checkpoints = snapflow::checkpoint::CheckpointTiming::every(Duration::from_millis(5));
    let job = common::memory_job("trim", config);
    job.checkpoint_storage(Arc::clone(storage));
    let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(log)).trim_log();
    if bounded {
        source = source.bounded();
    }
    job.source("source", source)
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", common::count_sink(out));
    job
}

fn append_counts(log: &Arc<dyn ReplayableLog>, from: u64, n: u64) {
    let typed = snapflow::TypedLog::<(u64, u64)>::new(Arc::clone(log));
    let records: Vec<(u64, u64)> = (from..from + n).map(|i| (i % 16, 1)).collect();
    for chunk in records.chunks(100) {
        typed.append_batch(PartitionId(0), chunk).expect("append");
    }
}

#[actix_rt::test]
async fn a_trimmed_log_loses_its_old_segments_and_still_restores_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FileLogOptions {
        partitions: 1,
        segment_bytes: 4096,
        ..FileLogOptions::default()
    };
    let log: Arc<dyn ReplayableLog> =
        Arc::new(FileLog::open(dir.path().join("log"), options).expect("log"));
    let storage: Arc<dyn CheckpointStorage> = Arc::new(
        LocalCheckpointStorage::new(dir.path().join("checkpoints"), "trim").expect("storage"),
    );
    let out = dir.path().join("out");
    let files = || std::fs::read_dir(dir.path().join("log/p-00000")).map_or(0, |d| d.count());
    append_counts(&log, 0, 4_000);
    let before = files();
    let handle = trimming_job(&storage, &log, &out, false)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let trimmed = poll_until(Duration::from_secs(30), || {
        log.start_offset(PartitionId(0)).expect("start").0 > 0
    })
    .await;
    assert!(trimmed, "the log was never trimmed");
    handle.stop();
    handle.wait().await.expect("stopped");
    assert!(
        files() < before,
        "no segment file was removed ({before} before)"
    );
    // The restore needs what the newest checkpoint had not read: still there.
    append_counts(&log, 4_000, 4_000);
    common::run_to_end(trimming_job(&storage, &log, &out, true))
        .await
        .expect("the restored run");
    let (_, lost, duplicated) = common::check_updates(&out, 8_000, 16);
    assert_eq!((lost, duplicated), (0, 0));
}
