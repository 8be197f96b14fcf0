//! Failures and restarts keep results exact: one injected failure, random kill schedules,
//! kills at the named moments of the checkpoint protocol, and the coordinator's failure.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chaos_config, check_updates, counting_log, keyed_job, Stage};
use snapflow::chaos::{ChaosMonkey, Kill, Moment};
use snapflow::checkpoint::{CheckpointStorage, MemoryCheckpointStorage};
use snapflow::prelude::*;
use snapflow::state::{Redistribution, TaskSnapshot};
use snapflow::{JobEvent, JobReport};

fn memory(name: &str) -> Arc<dyn CheckpointStorage> {
    Arc::new(
        MemoryCheckpointStorage::new(name)
            .expect("storage")
            .with_retain(10_000),
    )
}

/// Panics once on its next record after being armed.
#[derive(Clone)]
struct FailOnce(Arc<AtomicBool>);

impl Operator<(u64, u64), (u64, u64)> for FailOnce {
    fn process(
        &mut self,
        r: (u64, u64),
        _ctx: &mut OperatorContext<'_>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if self.0.swap(false, Ordering::SeqCst) {
            panic!("injected failure");
        }
        out.emit(r);
        Ok(())
    }
}

#[actix_rt::test]
async fn one_failure_after_a_checkpoint_in_a_three_stage_keyed_job_gives_exact_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, keys) = (40_000, 50);
    let storage = memory("one-failure");
    let armed = Arc::new(AtomicBool::new(false));
    let job = common::memory_job("one-failure", chaos_config(Threads::Arbiters(2)));
    job.checkpoint_storage(Arc::clone(&storage));
    let out = dir.path().join("out");
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(n, keys, 2)).bounded(),
    )
    .process("stage", Stage::new(200))
    .process("fail", FailOnce(Arc::clone(&armed)))
    .key_by(|(k, _): &(u64, u64)| *k)
    .reduce("sum", |a, b| (a.0, a.1 + b.1))
    .sink(
        "sink",
        snapflow::FileSink::new(&out, |(k, c): &(u64, u64), l: &mut String| {
            l.push_str(&format!("{k} {c}"))
        }),
    );
    let handle = job.build().expect("build").start().await.expect("start");
    assert!(
        common::poll_until(Duration::from_secs(20), || !handle
            .metrics()
            .checkpoints
            .is_empty())
        .await,
        "no checkpoint completed"
    );
    armed.store(true, Ordering::SeqCst);
    let report = handle.wait().await.expect("the job recovers and finishes");
    assert!(!armed.load(Ordering::SeqCst), "the failure never fired");
    assert_eq!(
        report.restarts, 1,
        "exactly the one injected failure: {:?}",
        report.events
    );
    let (records, lost, duplicated) = check_updates(&out, n, keys);
    assert_eq!((records, lost, duplicated), (n, 0, 0));
    // Per-stage counts in the final checkpoint: the stage saw every record exactly once.
    let last = report.last_checkpoint.expect("a final checkpoint");
    let cp = storage.verify(last).expect("verify");
    let mut stage_total = 0;
    for t in cp
        .manifest
        .tasks
        .iter()
        .filter(|t| t.task.vertex == "stage")
    {
        let snap =
            TaskSnapshot::from_bytes(&storage.read_task_state(last, &t.state).expect("read"))
                .expect("decode");
        let mut b = snapflow::state::OperatorStateBackend::restored(snap.operator);
        let seen = b
            .list_state::<u64>("seen", Redistribution::Split)
            .expect("seen");
        stage_total += seen.get(&b).expect("get").iter().sum::<u64>();
    }
    assert_eq!(stage_total, n, "the middle stage's checkpointed count");
}

/// `0..SNAPFLOW_CHAOS_SEEDS` (default 30), or `SNAPFLOW_CHAOS_SEED` alone.
fn seed_range() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    if std::env::var("SNAPFLOW_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("SNAPFLOW_LOG"))
            .try_init();
    }
    match var("SNAPFLOW_CHAOS_SEED") {
        Some(s) => s..s + 1,
        None => 0..var("SNAPFLOW_CHAOS_SEEDS").unwrap_or(30),
    }
}

fn run_chaos(seed: u64, monkey: ChaosMonkey, threads: Threads) -> (JobReport, (u64, u64, u64)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, keys) = (12_000, 20);
    let out = dir.path().join("out");
    let job = keyed_job(
        &format!("chaos-{seed}"),
        chaos_config(threads),
        memory(&format!("chaos-{seed}")),
        counting_log(n, keys, 2),
        &out,
        Stage::new(150),
    );
    job.chaos(monkey);
    let report = job.build().expect("build").run().unwrap_or_else(|e| {
        panic!("seed {seed} (rerun with SNAPFLOW_CHAOS_SEED={seed}): the job failed: {e}")
    });
    (report, check_updates(&out, n, keys))
}

/// Runs the 3-stage chaos job under every seed of [`seed_range`] with a monkey killing 4 times
/// at random intervals, its kinds of kill extended by `extra`, alternating the threading; every
/// run must give the exact output. Returns the reports.
fn randomized_runs(extra: &[Kill]) -> Vec<JobReport> {
    let mut reports = Vec::new();
    for seed in seed_range() {
        let mut monkey = ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(5), Duration::from_millis(25))
            .max_kills(4);
        monkey.kills.extend_from_slice(extra);
        let threads = if seed % 2 == 0 {
            Threads::Arbiters(2)
        } else {
            Threads::Current
        };
        let (report, (records, lost, duplicated)) = run_chaos(seed, monkey, threads);
        assert_eq!(
            (records, lost, duplicated),
            (12_000, 0, 0),
            "seed {seed} (rerun with SNAPFLOW_CHAOS_SEED={seed}): events {:?}",
            report.events
        );
        reports.push(report);
    }
    reports
}

#[test]
fn randomized_kill_schedules_lose_and_duplicate_nothing() {
    let seeds = seed_range();
    let kills: u32 = randomized_runs(&[]).iter().map(|r| r.kills).sum();
    assert!(
        u64::from(kills) >= seeds.end - seeds.start,
        "only {kills} kills over {seeds:?}"
    );
}

#[test]
fn randomized_kill_schedules_that_also_kill_the_job_supervisor_lose_and_duplicate_nothing() {
    let seeds = seed_range();
    let reports = randomized_runs(&[Kill::JobSupervisor, Kill::JobSupervisor]);
    let supervisor_restarts: u32 = reports.iter().map(|r| r.supervisor_restarts).sum();
    assert!(
        u64::from(supervisor_restarts) * 4 >= seeds.end - seeds.start,
        "only {supervisor_restarts} supervisor restarts over {seeds:?}"
    );
}

fn moment_run(moment: Moment) -> JobReport {
    let monkey = ChaosMonkey::new(7)
        .every(Duration::from_millis(15))
        .kills(vec![Kill::At(moment)])
        .max_kills(1);
    let (report, exact) = run_chaos(7, monkey, Threads::Arbiters(2));
    assert_eq!(exact, (12_000, 0, 0), "{moment:?}: {:?}", report.events);
    report
}

fn fired(report: &JobReport, what: &str) -> bool {
    report
        .events
        .iter()
        .any(|e| matches!(e, JobEvent::TaskFailed { error, .. } if error.contains(what)))
}

#[test]
fn a_kill_during_alignment_recovers_exactly_once() {
    let r = moment_run(Moment::DuringAlignment);
    assert!(
        fired(&r, "DuringAlignment"),
        "the kill never fired: {:?}",
        r.events
    );
}

#[test]
fn a_kill_after_capture_before_ack_recovers_exactly_once() {
    let r = moment_run(Moment::AfterCaptureBeforeAck);
    assert!(
        fired(&r, "AfterCaptureBeforeAck"),
        "the kill never fired: {:?}",
        r.events
    );
}

#[test]
fn a_kill_between_pre_commit_and_commit_recovers_exactly_once() {
    let r = moment_run(Moment::BetweenPreCommitAndCommit);
    assert!(
        fired(&r, "BetweenPreCommitAndCommit"),
        "the kill never fired: {:?}",
        r.events
    );
}

#[test]
fn a_coordinator_killed_during_a_manifest_write_is_restarted_and_results_stay_exact() {
    let r = moment_run(Moment::CoordinatorManifestWrite);
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, JobEvent::CoordinatorRestarted { .. })),
        "the coordinator was never restarted: {:?}",
        r.events
    );
    let monkey = ChaosMonkey::new(9)
        .every(Duration::from_millis(15))
        .kills(vec![Kill::Coordinator])
        .max_kills(2);
    let (report, exact) = run_chaos(9, monkey, Threads::Arbiters(2));
    assert_eq!(exact, (12_000, 0, 0));
    assert!(
        report
            .events
            .iter()
            .filter(|e| matches!(e, JobEvent::CoordinatorRestarted { .. }))
            .count()
            >= 1
    );
}
