//! Regression tests for the exactly-once holes found by testing from outside (issue 18): each
//! names the property it protects. Races are made reproducible with [`LatchedStorage`]: the
//! write under test blocks until the test releases it, and the test waits on the job's events,
//! never on a sleep.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{check_updates, counting_log, keyed_job, Events, LatchedStorage, Stage};
use futures::FutureExt;
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::{CheckpointId, CheckpointStorage, CheckpointTiming};
use snapflow::prelude::*;
use snapflow::state::{OperatorListState, Redistribution, ValueState};
use snapflow::{FileSink, JobEnd};

fn config(checkpoints: CheckpointTiming) -> JobConfig {
    JobConfig {
        parallelism: 2,
        batch_size: 64,
        threads: Threads::Arbiters(2),
        checkpoints,
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: 100,
        },
        ..JobConfig::default()
    }
}

fn local(dir: &std::path::Path, job: &str) -> Arc<dyn CheckpointStorage> {
    Arc::new(LocalCheckpointStorage::new(dir.join("checkpoints"), job).expect("storage"))
}

/// Waits for a job with a bound: a hang fails the test instead of blocking it.
async fn wait_bounded(handle: &JobHandle, what: &str) -> Result<JobReport> {
    tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 60 s (a hang)"))
}

/// Defect 1: after `cancel()`, `wait()` returned while the manifest write of the cancelled job
/// was still running; a job started next on the same storage then deleted that epoch's
/// pending sink files, the late manifest became the latest checkpoint, and every restore of it
/// failed. Now `wait()` returns only once the write has ended, and the next job resumes from
/// the manifest it finds, with exact output.
#[actix_rt::test]
async fn a_cancelled_jobs_late_manifest_is_never_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (20_000, 10);
    let log = counting_log(n, keys, 2);
    let latched = Arc::new(LatchedStorage::new(local(dir.path(), "late")));
    latched.hold_commit(|_| true);
    let _release = latched.release_on_drop();
    let timing = CheckpointTiming::every(Duration::from_millis(10));
    let job = keyed_job(
        "late",
        config(timing),
        Arc::clone(&latched) as Arc<dyn CheckpointStorage>,
        Arc::clone(&log),
        &out,
        Stage::new(0),
    );
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let handle = job.build().expect("build").start().await.expect("start");
    latched.entered().await;
    handle.cancel();
    events
        .until("the cancel", |e| matches!(e, JobEvent::CancelRequested))
        .await;
    assert!(
        handle.wait().now_or_never().is_none(),
        "wait() returned while a manifest write of the cancelled job was still running"
    );
    latched.release();
    let report = wait_bounded(&handle, "the cancelled job")
        .await
        .expect("a cancel is not a failure");
    assert_eq!(report.end, JobEnd::Cancelled);
    let late = latched
        .latest_complete()
        .expect("latest")
        .map(|c| c.id())
        .expect("the held manifest is complete");

    // The next job sees the late manifest from the start, and a failure restores from it.
    let job = keyed_job(
        "late",
        config(timing),
        Arc::clone(&latched) as Arc<dyn CheckpointStorage>,
        log,
        &out,
        Stage::new(0),
    );
    job.chaos(
        ChaosMonkey::new(7)
            .every(Duration::from_millis(15))
            .kills(vec![Kill::PanicInUserCode])
            .only_vertices(&["sum"])
            .max_kills(2),
    );
    let report = common::run_to_end(job).await.expect("the second job");
    assert_eq!(report.restored_from, Some(late));
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}

/// Counts each key's records in value state and emits the running count; every task runs a
/// processing-time timer per key, and the first timer to fire once `fail` is set fails the
/// task (once per job, `failed`).
#[derive(Clone)]
struct CountFailingOnTimer {
    count: Option<ValueState<u64>>,
    fail: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl KeyedOperator<u64, (u64, u64), (u64, u64)> for CountFailingOnTimer {
    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.count = Some(ctx.state().value_state("count")?);
        Ok(())
    }

    fn process(
        &mut self,
        (k, _): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let Some(count) = &self.count else {
            return Err(Error::Internal("not open".into()));
        };
        let c = count.get(ctx.state())?.copied().unwrap_or(0) + 1;
        count.set(ctx.state(), c)?;
        if c == 1 {
            let at = ctx.current_processing_time() + 5;
            ctx.register_processing_timer(at)?;
        }
        out.emit((k, c));
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if self.fail.load(Ordering::SeqCst) && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(Error::Internal(
                "injected failure during the manifest write".into(),
            ));
        }
        let at = ctx.current_processing_time() + 5;
        ctx.register_processing_timer(at)
    }
}

/// Defect 2: a task failure while the final checkpoint's manifest was being written left the
/// coordinator marked finished after the restore, so no new final checkpoint was ever
/// triggered and `wait()` never returned.
#[actix_rt::test]
async fn a_failure_during_the_final_manifest_write_still_finishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (5_000, 10);
    let latched = Arc::new(LatchedStorage::new(local(dir.path(), "final")));
    // Periodic checkpoints are off: the first manifest is the final checkpoint's.
    latched.hold_commit(|_| true);
    let _release = latched.release_on_drop();
    let fail = Arc::new(AtomicBool::new(false));
    let job = common::memory_job("final", config(CheckpointTiming::off()));
    job.checkpoint_storage(Arc::clone(&latched) as Arc<dyn CheckpointStorage>);
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(n, keys, 2)).bounded(),
    )
    .key_by(|(k, _): &(u64, u64)| *k)
    .process(
        "count",
        CountFailingOnTimer {
            count: None,
            fail: Arc::clone(&fail),
            failed: Arc::new(AtomicBool::new(false)),
        },
    )
    .sink(
        "sink",
        FileSink::new(&out, |(k, c): &(u64, u64), l: &mut String| {
            l.push_str(&format!("{k} {c}"))
        }),
    );
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let handle = job.build().expect("build").start().await.expect("start");
    latched.entered().await;
    fail.store(true, Ordering::SeqCst);
    events
        .until("a task failure during the write", |e| {
            matches!(e, JobEvent::TaskFailed { .. })
        })
        .await;
    latched.release();
    let report = wait_bounded(&handle, "the bounded job")
        .await
        .expect("the job finishes");
    assert_eq!(report.end, JobEnd::InputEnded);
    assert!(report.restarts >= 1, "{report:?}");
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}

/// Counts the records of each task in operator state and emits `(task, count)` at the end of
/// its input, once.
#[derive(Clone, Default)]
struct TotalAtEnd {
    seen: Option<OperatorListState<u64>>,
}

impl Operator<(u64, u64), (u64, u64)> for TotalAtEnd {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<()> {
        self.seen = Some(ctx.state().list_state("seen", Redistribution::Split)?);
        Ok(())
    }

    fn process(
        &mut self,
        _r: (u64, u64),
        ctx: &mut OperatorContext<'_>,
        _out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if let Some(seen) = &self.seen {
            let n = seen.get(ctx.state())?.first().copied().unwrap_or(0) + 1;
            seen.update(ctx.state(), vec![n])?;
        }
        Ok(())
    }

    fn end_of_input(
        &mut self,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if let Some(seen) = &self.seen {
            let n = seen.get(ctx.state())?.first().copied().unwrap_or(0);
            out.emit((u64::from(ctx.task().task.index), n));
        }
        Ok(())
    }
}

fn totals_job(dir: &std::path::Path, log: Arc<dyn ReplayableLog>, bounded: bool) -> JobBuilder {
    let job = common::memory_job(
        "totals",
        config(CheckpointTiming::every(Duration::from_millis(20))),
    );
    job.checkpoint_storage(local(dir, "totals"));
    let source = LogSource::<(u64, u64)>::msgpack(log);
    let source = if bounded { source.bounded() } else { source };
    job.source("source", source)
        .process("total", TotalAtEnd::default())
        .sink(
            "sink",
            FileSink::new(dir.join("out"), |(t, c): &(u64, u64), l: &mut String| {
                l.push_str(&format!("{t} {c}"))
            }),
        );
    job
}

/// Defect 3: `stop()` ran end-of-input before its final checkpoint, so a bounded job stopped
/// and resumed emitted its end-of-input output twice. A stop now checkpoints without ending
/// the input.
#[actix_rt::test]
async fn stop_then_resume_emits_end_of_input_output_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 10_000;
    let log = counting_log(n, 10, 2);
    // An unbounded source: the stop is the only way this run ends.
    let job = totals_job(dir.path(), Arc::clone(&log), false);
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let handle = job.build().expect("build").start().await.expect("start");
    events
        .until("a completed checkpoint", |e| {
            matches!(e, JobEvent::CheckpointCompleted { .. })
        })
        .await;
    handle.stop();
    let report = wait_bounded(&handle, "the stopped job")
        .await
        .expect("stop");
    assert_eq!(report.end, JobEnd::Stopped);
    assert!(
        FileSink::<(u64, u64)>::read_committed(&dir.path().join("out"))
            .expect("read")
            .is_empty(),
        "a stop is not an end of input: nothing is emitted at it"
    );

    let report = common::run_to_end(totals_job(dir.path(), log, true))
        .await
        .expect("the resumed job");
    assert_eq!(report.end, JobEnd::InputEnded);
    assert!(report.restored_from.is_some());
    let lines = FileSink::<(u64, u64)>::read_committed(&dir.path().join("out")).expect("read");
    let mut tasks: Vec<&str> = lines.iter().map(|l| &l[..1]).collect();
    tasks.sort_unstable();
    assert_eq!(tasks, vec!["0", "1"], "one total per task: {lines:?}");
    let total: u64 = lines
        .iter()
        .map(|l| {
            l.split_once(' ')
                .expect("line")
                .1
                .parse::<u64>()
                .expect("n")
        })
        .sum();
    assert_eq!(total, n);
}

/// Defect 4: with storage that always fails, a bounded job re-triggered its final checkpoint
/// every few milliseconds, forever. Now it fails after the tolerated number of consecutive
/// failures, with the storage error, having backed off between them.
#[actix_rt::test]
async fn permanently_failing_storage_fails_the_job_after_the_tolerance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let latched = Arc::new(LatchedStorage::new(local(dir.path(), "broken")));
    latched.fail_state_writes.store(true, Ordering::SeqCst);
    let mut config = config(CheckpointTiming::every(Duration::from_millis(10)));
    config.tolerable_failed_checkpoints = 3;
    config.checkpoint_failure_backoff = Duration::from_millis(5);
    let job = keyed_job(
        "broken",
        config,
        Arc::clone(&latched) as Arc<dyn CheckpointStorage>,
        counting_log(1_000, 10, 2),
        &dir.path().join("out"),
        Stage::new(0),
    );
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let handle = job.build().expect("build").start().await.expect("start");
    let error = wait_bounded(&handle, "the job on failing storage")
        .await
        .expect_err("the job must fail");
    match &error {
        Error::CheckpointsFailing {
            failures,
            tolerable,
            source,
            ..
        } => {
            assert_eq!((*failures, *tolerable), (4, 3), "{error}");
            let source = source.as_ref().expect("the storage error");
            assert!(source.to_string().contains("injected EIO"), "{source}");
        }
        other => panic!("expected CheckpointsFailing, got {other}"),
    }
    let mut aborted = 0;
    loop {
        match events
            .until("the job's end", |e| {
                matches!(
                    e,
                    JobEvent::CheckpointAborted { .. } | JobEvent::JobFailed { .. }
                )
            })
            .await
        {
            JobEvent::JobFailed { .. } => break,
            _ => aborted += 1,
        }
    }
    assert_eq!(aborted, 4, "one abort per failure, no more");
}

/// Defect 5: when every retained checkpoint failed verification, the job silently started
/// from the beginning of the log with empty state and its exactly-once sink committed
/// everything a second time. Now the job fails, naming each checkpoint; starting over is an
/// explicit choice.
#[actix_rt::test]
async fn all_checkpoints_corrupt_fails_instead_of_starting_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (3_000, 10);
    let log = counting_log(n, keys, 2);
    let storage =
        LocalCheckpointStorage::new(dir.path().join("checkpoints"), "corrupt").expect("storage");
    let root = storage.dir().to_path_buf();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(storage);
    let timing = CheckpointTiming::every(Duration::from_millis(5));
    let job = keyed_job(
        "corrupt",
        config(timing),
        Arc::clone(&storage),
        Arc::clone(&log),
        &out,
        Stage::new(0),
    );
    common::run_to_end(job).await.expect("first run");
    let ids = storage.completed_ids().expect("ids");
    assert!(!ids.is_empty());
    for id in &ids {
        let manifest = root.join(format!("chk-{:020}", id.0)).join("_manifest");
        let mut bytes = std::fs::read(&manifest).expect("read manifest");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&manifest, bytes).expect("corrupt manifest");
    }
    let committed = FileSink::<(u64, u64)>::read_committed(&out)
        .expect("read")
        .len();

    let job = keyed_job(
        "corrupt",
        config(timing),
        Arc::clone(&storage),
        Arc::clone(&log),
        &out,
        Stage::new(0),
    );
    let started = job.build().expect("build").start().await;
    match started {
        Err(Error::NoValidCheckpoint { rejected, .. }) => {
            let mut named: Vec<CheckpointId> = rejected.iter().map(|(id, _)| *id).collect();
            named.sort_unstable();
            assert_eq!(named, ids, "every checkpoint is named");
            assert!(rejected.iter().all(|(_, why)| !why.is_empty()));
        }
        Err(other) => panic!("expected NoValidCheckpoint, got {other}"),
        Ok(handle) => {
            let _ = wait_bounded(&handle, "the job that started over").await;
            panic!(
                "the job started over: {} committed lines, {} before",
                FileSink::<(u64, u64)>::read_committed(&out)
                    .expect("read")
                    .len(),
                committed
            );
        }
    }
    assert_eq!(
        FileSink::<(u64, u64)>::read_committed(&out)
            .expect("read")
            .len(),
        committed,
        "nothing was committed again"
    );

    // Asked for explicitly, the job starts over.
    let mut again = config(timing);
    again.when_no_checkpoint_verifies = snapflow::NoValidCheckpoint::StartOver;
    let job = keyed_job(
        "corrupt",
        again,
        storage,
        log,
        &dir.path().join("again"),
        Stage::new(0),
    );
    let report = common::run_to_end(job).await.expect("start over");
    assert_eq!(report.restored_from, None);
    assert_eq!(check_updates(&dir.path().join("again"), n, keys), (n, 0, 0));
}

/// A latch that an operator's `open` blocks on (on its task's thread) until the test releases
/// it, noting that it was entered and when it left.
#[derive(Default)]
struct OpenLatch {
    released: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
    entered: AtomicBool,
    left: AtomicBool,
}

impl OpenLatch {
    fn block(&self) {
        self.entered.store(true, Ordering::SeqCst);
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        while !*released {
            released = self.wake.wait(released).unwrap_or_else(|p| p.into_inner());
        }
        self.left.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        *self.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }
}

/// Defect 8 (seed 15 of the life-cycle test): `wait()` of a cancelled job returned while one
/// of its task actors was still opening on its arbiter thread; that task's sink recovery then
/// ran beside the next job on the same output folder and deleted the next job's pending file
/// as uncommitted, whose checkpoint then could never be restored (endless restarts, a stop
/// that never ended). `wait()` must return only once every task actor of the job has stopped.
#[actix_rt::test]
async fn wait_returns_only_after_every_task_of_the_job_has_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (5_000, 10);
    let log = counting_log(n, keys, 2);
    let storage = local(dir.path(), "zombie");
    let latch = Arc::new(OpenLatch::default());
    let blocking = {
        let latch = Arc::clone(&latch);
        common::PassThrough {
            on_open: Arc::new(move |index| {
                if index == 0 {
                    latch.block();
                }
                Ok(())
            }),
        }
    };
    // Release the latch whatever happens, so that a failing assertion cannot hang the test.
    struct Release(Arc<OpenLatch>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.release();
        }
    }
    let _release = Release(Arc::clone(&latch));
    let timing = CheckpointTiming::every(Duration::from_millis(10));
    let job = keyed_job(
        "zombie",
        config(timing),
        Arc::clone(&storage),
        Arc::clone(&log),
        &out,
        blocking,
    );
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let handle = job.build().expect("build").start().await.expect("start");
    while !latch.entered.load(Ordering::SeqCst) {
        actix::clock::sleep(Duration::from_millis(1)).await;
    }
    handle.cancel();
    events
        .until("the end of the job", |e| {
            matches!(e, JobEvent::JobFinished { .. })
        })
        .await;
    // The job has ended, but a task of it is still in `open`: `wait()` must not return yet.
    // (Without the fix it returns at once; half a second is ample for that.)
    assert!(
        tokio::time::timeout(Duration::from_millis(500), handle.wait())
            .await
            .is_err(),
        "wait() returned while a task of the cancelled job was still opening"
    );
    latch.release();
    let report = wait_bounded(&handle, "the cancelled job")
        .await
        .expect("a cancel is not a failure");
    assert_eq!(report.end, JobEnd::Cancelled);
    assert!(
        latch.left.load(Ordering::SeqCst),
        "wait() returned before the blocked open had ended"
    );

    // The next job on the same storage and output folder runs alone and is exact.
    let job = keyed_job("zombie", config(timing), storage, log, &out, Stage::new(0));
    common::run_to_end(job).await.expect("the next job");
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}
