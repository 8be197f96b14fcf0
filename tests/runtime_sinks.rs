//! The file sink's two-phase commit, directly and through a job that is cancelled and resumed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{poll_until, FaultyStorage};
use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, CheckpointTiming, LocalCheckpointStorage, TaskId,
};
use snapflow::prelude::*;
use snapflow::runtime::TaskInfo;
use snapflow::{FileSink, TwoPhaseCommitSink};

fn info() -> TaskInfo {
    TaskInfo {
        task: TaskId::new("out", 0).expect("task"),
        parallelism: 1,
        max_parallelism: 128,
        restored_from: None,
        attempt: 0,
    }
}

#[allow(clippy::ptr_arg)] // a FileSink<String> formats a &String
fn line(s: &String, out: &mut String) {
    out.push_str(s);
}

#[test]
fn a_precommitted_epoch_recorded_in_a_checkpoint_is_committed_exactly_once_on_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = FileSink::new(dir.path(), line);
    sink.open(&info()).expect("open");
    sink.begin(CheckpointId(1)).expect("begin");
    sink.write("a".to_string()).expect("write");
    sink.write("b".to_string()).expect("write");
    let txn = sink.pre_commit(CheckpointId(1)).expect("pre-commit");
    assert!(
        FileSink::<String>::read_committed(dir.path())
            .expect("read")
            .is_empty(),
        "pre-committed is not visible"
    );
    sink.begin(CheckpointId(2)).expect("begin");
    sink.write("c".to_string()).expect("write");
    drop(sink); // crash: epoch 1 pre-committed (in checkpoint 1), epoch 2 pending

    for attempt in 0..3 {
        let mut restored = FileSink::new(dir.path(), line);
        restored.open(&info()).expect("open");
        restored
            .recover(std::slice::from_ref(&txn))
            .expect("recover");
        let lines = FileSink::<String>::read_committed(dir.path()).expect("read");
        assert_eq!(
            lines,
            vec!["a", "b"],
            "restore {attempt}: epoch 1 exactly once, epoch 2 aborted"
        );
    }
    // A commit repeated after the rename is a no-op too.
    let mut again = FileSink::new(dir.path(), line);
    again.open(&info()).expect("open");
    again.commit(&txn).expect("idempotent commit");
    assert_eq!(
        FileSink::<String>::read_committed(dir.path()).expect("read"),
        vec!["a", "b"]
    );
}

fn seq_log(n: u64) -> Arc<dyn ReplayableLog> {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let typed = TypedLog::<u64>::new(Arc::clone(&log));
    let values: Vec<u64> = (0..n).collect();
    for chunk in values.chunks(1000) {
        typed.append_batch(PartitionId(0), chunk).expect("append");
    }
    log
}

fn build(
    storage: Arc<dyn CheckpointStorage>,
    log: Arc<dyn ReplayableLog>,
    out: &std::path::Path,
    bounded: bool,
) -> Job {
    let config = JobConfig {
        parallelism: 1,
        batch_size: 100,
        checkpoints: CheckpointTiming::every(Duration::from_millis(5)),
        // Every other manifest commit fails here: retry at the next interval, not after a
        // back-off that would let the whole input through before the cancel.
        checkpoint_failure_backoff: Duration::ZERO,
        ..JobConfig::default()
    };
    let job = common::memory_job("files", config);
    job.checkpoint_storage(storage);
    let source = LogSource::<u64>::msgpack(log);
    let source = if bounded { source.bounded() } else { source };
    job.source("src", source)
        .map("slow", |x: u64| {
            if x % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            x
        })
        .sink(
            "out",
            FileSink::new(out, |x: &u64, l: &mut String| l.push_str(&x.to_string())),
        );
    job.build().expect("build")
}

fn committed(out: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = FileSink::<u64>::read_committed(out)
        .expect("read")
        .iter()
        .map(|l| l.parse().expect("number"))
        .collect();
    v.sort_unstable();
    v
}

#[actix_rt::test]
async fn the_file_sink_commits_only_completed_epochs_and_a_resumed_job_completes_them_exactly_once()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let n = 60_000;
    let log = seq_log(n);
    let local: Arc<dyn CheckpointStorage> = Arc::new(
        LocalCheckpointStorage::new(dir.path().join("chk"), "files")
            .expect("storage")
            .with_retain(1000),
    );
    let mut faulty = FaultyStorage::new(Arc::clone(&local));
    faulty.fail_commit = Some(Box::new(|id| id.0 % 2 == 0));
    let handle = build(Arc::new(faulty), Arc::clone(&log), &out, false)
        .start()
        .await
        .expect("start");
    assert!(
        poll_until(Duration::from_secs(20), || handle
            .metrics()
            .checkpoints
            .len()
            >= 3)
        .await
    );
    handle.cancel();
    let report = handle.wait().await.expect("a cancel is not a failure");
    assert_eq!(report.end, snapflow::JobEnd::Cancelled);

    // What is visible is a prefix of the input that no completed checkpoint's barrier has
    // passed: epochs become visible only once a checkpoint recording them is complete. (A
    // cancellation may land between the commits of two epochs of one completed checkpoint,
    // when an earlier checkpoint had failed, so the prefix need not end at a barrier.)
    let visible = committed(&out);
    let mut newest = 0u64;
    for id in local.completed_ids().expect("ids") {
        let m = local.verify(id).expect("verify").manifest;
        newest = newest.max(m.sources[0].offset.0);
    }
    assert_eq!(
        visible,
        (0..visible.len() as u64).collect::<Vec<_>>(),
        "visible output is a prefix, without gaps or repeats"
    );
    assert!(
        visible.len() as u64 <= newest,
        "{} records visible, beyond the newest completed checkpoint's {newest}",
        visible.len()
    );
    assert!(
        (visible.len() as u64) < n,
        "the job was cancelled before the end"
    );

    // Resume from the latest checkpoint and run to the end: every record exactly once.
    let report = build(Arc::clone(&local), log, &out, true)
        .start()
        .await
        .expect("restart")
        .wait()
        .await
        .expect("run");
    assert!(report.restored_from.is_some());
    assert_eq!(committed(&out), (0..n).collect::<Vec<_>>());
}

#[test]
fn a_transaction_whose_file_name_is_not_the_sinks_is_refused_on_commit_and_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = FileSink::new(dir.path(), line);
    sink.open(&info()).expect("open");
    // Names as a damaged or forged checkpoint could hold them: an empty name (the sink
    // directory itself), paths, hidden files, other shapes.
    for bad in [
        "",
        ".txt",
        "../out=0=00000000000000000001=0.txt",
        "a/b=0=00000000000000000001=0.txt",
        ".pending=0=00000000000000000001=0.txt",
        "out=0=1=0.txt",
        "out=0=00000000000000000001=0",
        "out=x=00000000000000000001=0.txt",
        "out=0=00000000000000000001=0=9.txt",
    ] {
        for records in [0, 3] {
            let txn = snapflow::sink::FileTxn {
                epoch: 1,
                file: bad.to_string(),
                records,
            };
            assert!(
                matches!(sink.commit(&txn), Err(Error::InvalidName { .. })),
                "commit accepted {bad:?} ({records} records)"
            );
            assert!(
                matches!(
                    sink.recover(std::slice::from_ref(&txn)),
                    Err(Error::InvalidName { .. })
                ),
                "recover accepted {bad:?} ({records} records)"
            );
        }
    }
    // The sink's own names pass.
    sink.begin(CheckpointId(4)).expect("begin");
    sink.write("x".to_string()).expect("write");
    let txn = sink.pre_commit(CheckpointId(4)).expect("pre-commit");
    sink.commit(&txn).expect("the sink's own name");
    assert_eq!(
        FileSink::<String>::read_committed(dir.path()).expect("read"),
        vec!["x"]
    );
}
