//! A processing-time timer restored in a new process fires at the moment it was registered
//! for, once (issue 18, defect 7: processing time used to restart at zero in every process).
//!
//! The test runs its two halves in child processes of this test binary (the same test, told
//! by an environment variable which half it is): the first registers a timer and stops with a
//! final checkpoint, the second restores it after its moment has passed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::state::ValueState;
use snapflow::{FileSink, JobEvent};

const TEST: &str = "a_processing_time_timer_restored_in_a_new_process_fires_once_at_its_moment";
const CHILD: &str = "SNAPFLOW_PT_CHILD";
const DIR: &str = "SNAPFLOW_PT_DIR";
/// How far ahead of the first record the timer is registered.
const AHEAD_MS: i64 = 1_500;

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Registers one processing-time timer `AHEAD_MS` after a key's first record; when it fires,
/// emits `(timer timestamp, wall clock at firing)`.
#[derive(Clone, Default)]
struct OneTimer {
    registered: Option<ValueState<i64>>,
}

impl KeyedOperator<u64, u64, (i64, i64)> for OneTimer {
    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.registered = Some(ctx.state().value_state("registered")?);
        Ok(())
    }

    fn process(
        &mut self,
        _r: u64,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(i64, i64)>,
    ) -> Result<()> {
        let Some(registered) = &self.registered else {
            return Err(Error::Internal("not open".into()));
        };
        if registered.get(ctx.state())?.is_none() {
            let at = ctx.current_processing_time() + AHEAD_MS;
            registered.set(ctx.state(), at)?;
            ctx.register_processing_timer(at)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        _domain: TimeDomain,
        _ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(i64, i64)>,
    ) -> Result<()> {
        out.emit((timestamp, wall_ms()));
        Ok(())
    }
}

fn out_dir(dir: &Path) -> PathBuf {
    dir.join("out")
}

/// Runs one half: starts the job on `dir` (its log, checkpoints and output), waits for what
/// the half needs, stops the job.
fn child(mode: &str, dir: &Path) {
    let log: Arc<dyn ReplayableLog> =
        Arc::new(FileLog::open(dir.join("log"), FileLogOptions::with_partitions(1)).expect("log"));
    if mode == "register" {
        TypedLog::<u64>::new(Arc::clone(&log))
            .append_batch(PartitionId(0), &[0])
            .expect("append");
        log.sync().expect("sync");
    }
    let config = JobConfig {
        parallelism: 1,
        threads: Threads::Arbiters(1),
        checkpoints: CheckpointTiming::every(Duration::from_millis(50)),
        ..JobConfig::default()
    };
    let job = common::memory_job("ptime", config);
    job.checkpoint_storage(Arc::new(
        LocalCheckpointStorage::new(dir.join("checkpoints"), "ptime").expect("storage"),
    ));
    job.source("source", LogSource::<u64>::msgpack(log))
        .key_by(|k: &u64| *k)
        .process("timer", OneTimer::default())
        .sink(
            "sink",
            FileSink::new(out_dir(dir), |(ts, at): &(i64, i64), l: &mut String| {
                l.push_str(&format!("{ts} {at}"))
            }),
        );
    let out = out_dir(dir);
    let system = actix::System::new();
    let report = system.block_on(async move {
        struct Completed(tokio::sync::mpsc::UnboundedSender<()>);
        impl actix::Actor for Completed {
            type Context = actix::Context<Self>;
        }
        impl actix::Handler<JobEvent> for Completed {
            type Result = ();
            fn handle(&mut self, e: JobEvent, _: &mut Self::Context) {
                if matches!(e, JobEvent::CheckpointCompleted { .. }) {
                    let _ = self.0.send(());
                }
            }
        }
        use actix::Actor;
        let (tx, mut completed) = tokio::sync::mpsc::unbounded_channel();
        job.events(Completed(tx).start().recipient());
        let handle = job.build().expect("build").start().await.expect("start");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(std::time::Instant::now() < deadline, "{mode}: timed out");
            completed.recv().await.expect("events");
            let done = if mode == "register" {
                // The record is processed (so the timer is registered) before this checkpoint.
                handle
                    .metrics()
                    .tasks
                    .iter()
                    .any(|t| t.task.vertex == "timer" && t.records_in > 0)
            } else {
                !FileSink::<(i64, i64)>::read_committed(&out)
                    .expect("read")
                    .is_empty()
            };
            if done {
                break;
            }
        }
        handle.stop();
        handle.wait().await
    });
    report.expect("the half's job");
}

#[test]
fn a_processing_time_timer_restored_in_a_new_process_fires_once_at_its_moment() {
    if let (Ok(mode), Ok(dir)) = (std::env::var(CHILD), std::env::var(DIR)) {
        child(&mode, Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |mode: &str| {
        let status = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, mode)
            .env(DIR, dir.path())
            .status()
            .expect("run a child process");
        assert!(status.success(), "the {mode} half failed: {status}");
    };
    let before = wall_ms();
    run("register");
    let after = wall_ms();
    // Let the timer's moment pass while no process holds it: the restore finds it overdue.
    let overdue_at = after + AHEAD_MS + 100;
    while wall_ms() < overdue_at {
        std::thread::sleep(Duration::from_millis(20));
    }
    run("restore");
    let lines = FileSink::<(i64, i64)>::read_committed(&out_dir(dir.path())).expect("read");
    assert_eq!(lines.len(), 1, "the timer fired once: {lines:?}");
    let (ts, fired) = lines[0].split_once(' ').expect("a line");
    let (ts, fired): (i64, i64) = (ts.parse().expect("ts"), fired.parse().expect("fired"));
    // The timer's time is wall-clock time: registered during the first process's life.
    assert!(
        ts >= before + AHEAD_MS - 50 && ts <= after + AHEAD_MS + 50,
        "the timer's timestamp {ts} is not wall-clock time between {} and {}",
        before + AHEAD_MS,
        after + AHEAD_MS
    );
    assert!(fired >= ts, "fired at {fired}, before its moment {ts}");
}
