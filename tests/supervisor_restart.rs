//! The job's supervisor is itself supervised (issue 11): when its actor dies, the job's root
//! restarts it, the new supervisor restores the whole job from the latest complete checkpoint,
//! and the `JobHandle` the application holds keeps working (wait, stop, metrics). A write the
//! dead supervisor's actors started ends before the successor restores.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chaos_config, check_updates, counting_log, keyed_job, Events, FaultyStorage, Stage};
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::{CheckpointId, CheckpointStorage, MemoryCheckpointStorage};
use snapflow::prelude::*;
use snapflow::{FileSink, JobEnd};

const SEED: u64 = 11;

fn supervisor_monkey(every: Duration, kills: u32) -> ChaosMonkey {
    ChaosMonkey::new(SEED)
        .kills(vec![Kill::JobSupervisor])
        .every(every)
        .max_kills(kills)
}

fn supervisor_kills(events: &[JobEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, JobEvent::ChaosKill { how, .. } if how.contains("supervisor")))
        .count()
}

/// Starts `job` with an event tap.
async fn start(job: JobBuilder) -> (JobHandle, Events) {
    let (tap, events) = Events::tap();
    job.events(tap);
    (
        job.build().expect("build").start().await.expect("start"),
        events,
    )
}

async fn until_supervisor_restarts(events: &mut Events) {
    events
        .until("the supervisor's restart", |e| {
            matches!(e, JobEvent::SupervisorRestarting { .. })
        })
        .await;
}

/// Waits for the supervisor's restart, then for the job restored by the new supervisor.
async fn until_restarted_and_restored(events: &mut Events) {
    until_supervisor_restarts(events).await;
    events
        .until("the job restored by the new supervisor", |e| {
            matches!(e, JobEvent::Started { .. })
        })
        .await;
}

/// The committed output of a job stopped before its input ended: for every key, the running
/// counts 1..=m seen exactly once each (a prefix of the full fold, nothing lost or doubled).
/// Returns the records in it.
fn check_prefix(out: &Path) -> u64 {
    let lines = FileSink::<(u64, u64)>::read_committed(out).expect("read committed output");
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for l in &lines {
        let (k, c) = l.split_once(' ').expect("a `key count` line");
        counts
            .entry(k.parse().expect("key"))
            .or_default()
            .push(c.parse().expect("count"));
    }
    for (k, mut c) in counts {
        c.sort_unstable();
        let expected: Vec<u64> = (1..=c.len() as u64).collect();
        assert_eq!(c, expected, "key {k}: counts lost or doubled (seed {SEED})");
    }
    lines.len() as u64
}

#[actix_rt::test]
async fn killing_the_job_supervisor_mid_run_ends_with_exactly_once_output_and_a_working_job_handle()
{
    snapflow::chaos::quiet_chaos_panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (60_000, 10);
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(MemoryCheckpointStorage::new("kill-supervisor").expect("storage"));
    let job = keyed_job(
        "kill-supervisor",
        chaos_config(Threads::Arbiters(2)),
        storage,
        counting_log(n, keys, 2),
        &out,
        Stage::new(100),
    );
    job.chaos(supervisor_monkey(Duration::from_millis(60), 2));
    let (handle, mut events) = start(job).await;
    until_restarted_and_restored(&mut events).await;
    // The handle still reaches the job: its metrics move on, and a checkpoint asked for now
    // is taken by the new supervisor.
    let before = handle.metrics();
    handle.trigger_checkpoint();
    events
        .until("a checkpoint under the new supervisor", |e| {
            matches!(e, JobEvent::CheckpointCompleted { .. })
        })
        .await;
    assert!(!handle.is_finished());
    let report = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the job ends (no hang)")
        .unwrap_or_else(|e| panic!("seed {SEED}: the job fails: {e}"));
    assert_eq!(report.end, JobEnd::InputEnded);
    assert!(report.supervisor_restarts >= 1, "{:?}", report.events);
    assert_eq!(
        report.supervisor_restarts as usize,
        supervisor_kills(&report.events),
        "every supervisor kill is one supervisor restart (seed {SEED})"
    );
    assert!(report.metrics.checkpoints.len() as u64 >= report.checkpoints_completed);
    assert!(before.checkpoints.len() <= report.metrics.checkpoints.len());
    assert_eq!(
        check_updates(&out, n, keys),
        (n, 0, 0),
        "exactly-once output (seed {SEED})"
    );
}

#[actix_rt::test]
async fn a_stop_after_the_job_supervisor_was_killed_ends_with_a_final_checkpoint_to_resume_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (400_000, 10);
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(MemoryCheckpointStorage::new("stop-after-kill").expect("storage"));
    let log = counting_log(n, keys, 2);
    let build = |chaos: bool| {
        let job = keyed_job(
            "stop-after-kill",
            chaos_config(Threads::Arbiters(2)),
            Arc::clone(&storage),
            Arc::clone(&log),
            &out,
            Stage::new(50),
        );
        if chaos {
            job.chaos(supervisor_monkey(Duration::from_millis(50), 1));
        }
        job
    };
    let job = build(true);
    let (handle, mut events) = start(job).await;
    until_restarted_and_restored(&mut events).await;
    handle.stop();
    let report = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the stop ends the job (no hang)")
        .expect("the stop succeeds");
    assert_eq!(report.end, JobEnd::Stopped, "{:?}", report.events);
    assert_eq!(report.supervisor_restarts, 1);
    let at_stop = check_prefix(&out);
    assert!(at_stop < n, "the job was stopped before its input ended");
    // Resumed from the stop's final checkpoint, the job carries on exactly.
    let report = common::run_to_end(build(false)).await.expect("resume");
    assert_eq!(report.end, JobEnd::InputEnded);
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}

#[actix_rt::test]
async fn a_new_supervisor_restores_only_after_every_write_of_the_dead_one_has_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (20_000, 10);
    // Every state write of checkpoint 1 takes 1.5 s: the supervisor is killed while they run.
    let started = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&started);
    let mut storage = FaultyStorage::new(Arc::new(
        MemoryCheckpointStorage::new("fence").expect("storage"),
    ));
    storage.delay_write = Some((
        Box::new(move |id| {
            let slow = id == CheckpointId(1);
            if slow {
                seen.store(true, Ordering::SeqCst);
            }
            slow
        }),
        Duration::from_millis(1500),
    ));
    let job = keyed_job(
        "fence",
        chaos_config(Threads::Arbiters(2)),
        Arc::new(storage),
        counting_log(n, keys, 2),
        &out,
        Stage::new(0),
    );
    job.chaos(supervisor_monkey(Duration::from_millis(100), 1));
    let (handle, mut events) = start(job).await;
    until_supervisor_restarts(&mut events).await;
    assert!(
        started.load(Ordering::SeqCst),
        "the slow write had not started before the kill: the test proves nothing"
    );
    // A state write of the dead supervisor's checkpoint is still running: it must end before
    // the successor reads the latest checkpoint and numbers its own above the storage's ids.
    let early = tokio::time::timeout(
        Duration::from_millis(500),
        events.until("a restore", |e| matches!(e, JobEvent::Started { .. })),
    )
    .await;
    assert!(
        early.is_err(),
        "the new supervisor restored while a write of the dead one was running"
    );
    events
        .until("the restore once the write ended", |e| {
            matches!(e, JobEvent::Started { .. })
        })
        .await;
    let report = handle.wait().await.expect("the job ends");
    assert_eq!(report.supervisor_restarts, 1);
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}
