//! Savepoints and restore by reference (issue 13, section 1): savepoints outlive retention, are
//! relocatable, restore strictly by uid, start new sources at their log's start, and carry a
//! keyed job through parallelism 2 -> 3 -> 1 with exactly-once output.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{check_updates, count_sink, poll_until};
use snapflow::checkpoint::{CheckpointKind, CheckpointTiming};
use snapflow::prelude::*;
use snapflow::{FileSink, Savepoint, StartFrom};

const KEYS: u64 = 10;

/// Appends records `from..to` as `(i % KEYS, 1)`, round robin over the log's partitions.
fn append(log: &Arc<dyn ReplayableLog>, from: u64, to: u64) {
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(log));
    let parts = u64::from(log.partitions());
    for i in from..to {
        typed
            .append(PartitionId((i % parts) as u32), &(i % KEYS, 1))
            .expect("append");
    }
}

fn config(parallelism: u32, start_from: StartFrom) -> JobConfig {
    JobConfig {
        parallelism,
        threads: Threads::Arbiters(2),
        batch_size: 16,
        checkpoints: CheckpointTiming::every(Duration::from_millis(20)),
        start_from,
        ..JobConfig::default()
    }
}

fn storage(root: &Path, job: &str) -> Arc<dyn CheckpointStorage> {
    Arc::new(LocalCheckpointStorage::new(root, job).expect("storage"))
}

/// A running keyed count: source -> key_by -> reduce("sum") -> file sink, each record's new
/// count a line, so `check_updates` sees every record's effect exactly once or not.
fn sum_job(
    name: &str,
    config: JobConfig,
    storage: Arc<dyn CheckpointStorage>,
    log: &Arc<dyn ReplayableLog>,
    out: &Path,
    bounded: bool,
) -> JobBuilder {
    let job = JobBuilder::with_config(name, config);
    job.checkpoint_storage(storage);
    let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(log));
    if bounded {
        source = source.bounded();
    }
    job.source("source", source)
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", count_sink(out));
    job
}

fn committed(out: &Path) -> usize {
    FileSink::<(u64, u64)>::read_committed(out)
        .map(|l| l.len())
        .unwrap_or(0)
}

/// Starts `job`, waits until its sink has committed at least `lines` lines in total (so the
/// savepoint falls somewhere in the stream), and stops it with a savepoint.
async fn run_then_stop_with_savepoint(job: JobBuilder, out: &Path, lines: usize) -> Savepoint {
    let handle = job.build().expect("build").start().await.expect("start");
    assert!(
        poll_until(Duration::from_secs(30), || committed(out) >= lines).await,
        "the job committed fewer than {lines} lines in 30 s"
    );
    let sp = handle.stop_with_savepoint().await.expect("savepoint");
    let report = handle.wait().await.expect("the job stops");
    assert_eq!(report.end, JobEnd::Stopped);
    sp
}

/// Runs `sum_job` at parallelism 2 from the latest checkpoint in `chk`, unbounded, and stops
/// it with a savepoint once `lines` lines are committed.
async fn first_run(
    name: &str,
    chk: &Path,
    log: &Arc<dyn ReplayableLog>,
    out: &Path,
    lines: usize,
) -> Savepoint {
    let job = sum_job(
        name,
        config(2, StartFrom::Latest),
        storage(chk, name),
        log,
        out,
        false,
    );
    run_then_stop_with_savepoint(job, out, lines).await
}

fn assert_exact(out: &Path, n: u64) {
    let (records, lost, duplicated) = check_updates(out, n, KEYS);
    assert_eq!(
        (records, lost, duplicated),
        (n, 0, 0),
        "every record's update exactly once"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[actix_rt::test]
async fn a_savepoint_survives_retention_and_records_the_job_graph() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    append(&log, 0, 2_000);
    let store: Arc<dyn CheckpointStorage> = Arc::new(
        LocalCheckpointStorage::new(dir.path().join("chk"), "retained")
            .expect("storage")
            .with_retain(2),
    );
    let out = dir.path().join("out");
    let job = sum_job(
        "retained",
        config(2, StartFrom::Latest),
        Arc::clone(&store),
        &log,
        &out,
        false,
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let sp = handle.savepoint().await.expect("savepoint");
    assert_eq!(sp.location, store.location(sp.id));
    let after = handle.metrics().checkpoints_completed;
    assert!(
        poll_until(Duration::from_secs(30), || handle
            .metrics()
            .checkpoints_completed
            >= after + 6)
        .await,
        "six more checkpoints complete"
    );
    handle.stop();
    handle.wait().await.expect("stops");

    let ids = store.completed_ids().expect("ids");
    assert!(
        ids.contains(&sp.id),
        "retention kept the savepoint: {ids:?}"
    );
    let kinds: Vec<CheckpointKind> = ids
        .iter()
        .map(|id| store.read_manifest(*id).expect("manifest").kind)
        .collect();
    let checkpoints = kinds
        .iter()
        .filter(|k| **k == CheckpointKind::Checkpoint)
        .count();
    assert_eq!(
        checkpoints, 2,
        "retention keeps 2 checkpoints besides: {kinds:?}"
    );
    let m = store
        .verify(sp.id)
        .expect("the savepoint verifies")
        .manifest;
    assert!(m.is_savepoint());
    let sum = m
        .vertices
        .iter()
        .find(|v| v.uid == "sum")
        .expect("the graph records the keyed vertex");
    assert_eq!((sum.role.as_str(), sum.parallelism), ("keyed", 2));
    assert!(
        sum.states.iter().any(|s| s.value_type.contains("u64")),
        "the reduce state and its type are recorded: {:?}",
        sum.states
    );
    let names: Vec<&str> = m.vertices.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["source", "sum", "sink"]);
}

#[actix_rt::test]
async fn a_job_restores_from_a_relocated_savepoint_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    append(&log, 0, 3_000);
    let out = dir.path().join("out");
    let first = dir.path().join("first");
    let sp = first_run("moving", &first, &log, &out, 500).await;

    // Copy the savepoint's folder elsewhere and delete everything the first job wrote.
    let moved: PathBuf = dir.path().join("elsewhere").join("my-savepoint");
    copy_dir(Path::new(&sp.location), &moved);
    std::fs::remove_dir_all(&first).expect("remove the first storage");

    append(&log, 3_000, 5_000);
    let start = StartFrom::Savepoint(moved.display().to_string());
    let job = sum_job(
        "moved-v2",
        config(2, start),
        storage(&dir.path().join("second"), "moved-v2"),
        &log,
        &out,
        true,
    );
    let report = common::run_to_end(job).await.expect("runs to its end");
    assert_eq!(report.restored_from, Some(sp.id));
    assert_exact(&out, 5_000);
}

#[actix_rt::test]
async fn starting_from_a_missing_savepoint_or_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    append(&log, 0, 10);
    let out = dir.path().join("out");
    let nowhere = dir.path().join("no-such-savepoint").display().to_string();
    let job = sum_job(
        "missing",
        config(1, StartFrom::Savepoint(nowhere.clone())),
        storage(&dir.path().join("chk"), "missing"),
        &log,
        &out,
        true,
    );
    let e = job
        .build()
        .expect("build")
        .start()
        .await
        .expect_err("no savepoint there");
    assert!(
        matches!(&e, Error::NothingAtLocation { location } if *location == nowhere),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Fatal);
    let job = sum_job(
        "missing",
        config(1, StartFrom::Checkpoint(CheckpointId(7))),
        storage(&dir.path().join("chk"), "missing"),
        &log,
        &out,
        true,
    );
    let e = job
        .build()
        .expect("build")
        .start()
        .await
        .expect_err("no checkpoint 7");
    assert!(matches!(e, Error::CheckpointNotFound { .. }), "{e}");
}

/// Version 1 of a job with an `enrich` stage, and version 2 without it that renames `sum` to
/// `total` but keeps its uid.
fn versioned_job(
    v2: bool,
    config: JobConfig,
    storage: Arc<dyn CheckpointStorage>,
    log: &Arc<dyn ReplayableLog>,
    out: &Path,
) -> JobBuilder {
    let job = JobBuilder::with_config("versioned", config);
    job.checkpoint_storage(storage);
    let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(log));
    if v2 {
        source = source.bounded();
    }
    let stream = job.source("source", source);
    let stream = if v2 {
        stream
    } else {
        stream.map("enrich", |r| r)
    };
    let name = if v2 { "total" } else { "sum" };
    stream
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce(name, |a, b| (a.0, a.1 + b.1))
        .uid("sum")
        .sink("sink", count_sink(out));
    job
}

#[actix_rt::test]
async fn strict_mode_refuses_unclaimed_state_and_allow_drop_accepts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    append(&log, 0, 2_000);
    let out = dir.path().join("out");
    let chk = dir.path().join("chk");
    let job = versioned_job(
        false,
        config(2, StartFrom::Latest),
        storage(&chk, "versioned"),
        &log,
        &out,
    );
    let sp = run_then_stop_with_savepoint(job, &out, 300).await;
    append(&log, 2_000, 4_000);

    let start = StartFrom::Savepoint(sp.location.clone());
    let job = versioned_job(
        true,
        config(2, start.clone()),
        storage(&chk, "versioned"),
        &log,
        &out,
    );
    let e = job
        .build()
        .expect("build")
        .start()
        .await
        .expect_err("the savepoint holds state of 'enrich', which version 2 lacks");
    match &e {
        Error::UnclaimedState {
            checkpoint,
            vertices,
        } => {
            assert_eq!(*checkpoint, sp.id);
            assert_eq!(vertices, &["enrich".to_string()]);
        }
        other => panic!("expected UnclaimedState, got {other}"),
    }
    assert_eq!(e.class(), ErrorClass::Fatal);
    assert!(e.to_string().contains("\"enrich\""), "{e}");

    let mut allowing = config(2, start);
    allowing.allow_unclaimed_state = true;
    let job = versioned_job(true, allowing, storage(&chk, "versioned"), &log, &out);
    let report = common::run_to_end(job)
        .await
        .expect("runs with the state dropped");
    assert_eq!(report.restored_from, Some(sp.id));
    // `total` kept `sum`'s state through its uid: the counts go on from where they were.
    assert_exact(&out, 4_000);
}

#[actix_rt::test]
async fn a_source_added_after_a_savepoint_reads_from_its_start_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    append(&old, 0, 2_000);
    let out = dir.path().join("out");
    let chk = dir.path().join("chk");
    let sp = first_run("grows", &chk, &old, &out, 300).await;

    let new: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(3));
    append(&new, 0, 1_000);
    let job = JobBuilder::with_config("grows", config(2, StartFrom::Checkpoint(sp.id)));
    job.checkpoint_storage(storage(&chk, "grows"));
    let a = job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(Arc::clone(&old)).bounded(),
    );
    let b = job.source(
        "added",
        LogSource::<(u64, u64)>::msgpack(Arc::clone(&new)).bounded(),
    );
    a.union(b)
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", count_sink(&out));
    let report = common::run_to_end(job).await.expect("runs to its end");
    assert_eq!(report.restored_from, Some(sp.id));
    // Every record of the old log once, and every record of the new one from its start.
    assert_exact(&out, 3_000);
}

#[actix_rt::test]
async fn rescaling_2_to_3_to_1_through_savepoints_of_real_jobs_is_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    let out = dir.path().join("out");
    let chk = dir.path().join("chk");
    append(&log, 0, 3_000);
    let at2 = first_run("rescaled", &chk, &log, &out, 1_000).await;

    append(&log, 3_000, 6_000);
    let job = sum_job(
        "rescaled",
        config(3, StartFrom::Savepoint(at2.location.clone())),
        storage(&chk, "rescaled"),
        &log,
        &out,
        false,
    );
    let at3 = run_then_stop_with_savepoint(job, &out, 4_000).await;
    assert!(at3.id > at2.id);
    let m = storage(&chk, "rescaled")
        .read_manifest(at3.id)
        .expect("manifest");
    assert_eq!(
        m.parallelism.get("sum"),
        Some(&3),
        "written at parallelism 3"
    );

    append(&log, 6_000, 9_000);
    let job = sum_job(
        "rescaled",
        config(1, StartFrom::Savepoint(at3.location.clone())),
        storage(&chk, "rescaled"),
        &log,
        &out,
        true,
    );
    let report = common::run_to_end(job).await.expect("runs to its end");
    assert_eq!(report.restored_from, Some(at3.id));
    assert_exact(&out, 9_000);
}

/// The largest count each key reached in the committed output at `out`.
fn final_counts(out: &Path) -> std::collections::BTreeMap<u64, u64> {
    let mut max = std::collections::BTreeMap::new();
    for l in FileSink::<(u64, u64)>::read_committed(out).expect("output") {
        let (k, c) = l.split_once(' ').expect("a `key count` line");
        let (k, c): (u64, u64) = (k.parse().expect("key"), c.parse().expect("count"));
        let m = max.entry(k).or_insert(0);
        *m = c.max(*m);
    }
    max
}

#[actix_rt::test]
async fn a_trimmed_log_keeps_what_a_savepoint_needs_across_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    append(&log, 0, 2_000);
    let chk = dir.path().join("chk");
    let store = || -> Arc<dyn CheckpointStorage> {
        Arc::new(
            LocalCheckpointStorage::new(&chk, "trimmed")
                .expect("storage")
                .with_retain(1),
        )
    };
    let trimming_job = |out: &Path, bounded: bool, start: StartFrom| {
        let mut config = config(2, start);
        // The check run writes to a sink of its own: the first runs' sink state is dropped.
        config.allow_unclaimed_state = bounded;
        let sink = if bounded { "check" } else { "sink" };
        let job = JobBuilder::with_config("trimmed", config);
        job.checkpoint_storage(store());
        let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(&log)).trim_log();
        if bounded {
            source = source.bounded();
        }
        job.source("source", source)
            .key_by(|(k, _): &(u64, u64)| *k)
            .reduce("sum", |a, b| (a.0, a.1 + b.1))
            .sink(sink, count_sink(out));
        job
    };
    let checkpoints = |handle: &JobHandle, more: u64| {
        let until = handle.metrics().checkpoints_completed + more;
        let handle = handle.clone();
        async move {
            assert!(
                poll_until(Duration::from_secs(30), || handle
                    .metrics()
                    .checkpoints_completed
                    >= until)
                .await,
                "{more} more checkpoints"
            );
        }
    };
    let out = dir.path().join("out");
    let handle = trimming_job(&out, false, StartFrom::Latest)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let sp = handle.savepoint().await.expect("savepoint");
    append(&log, 2_000, 3_000);
    checkpoints(&handle, 5).await;
    handle.stop();
    handle.wait().await.expect("stops");
    let needed = store().read_manifest(sp.id).expect("manifest").sources;
    assert!(!needed.is_empty());

    // A second run finds the savepoint in the storage and keeps its records too.
    let handle = trimming_job(&out, false, StartFrom::Latest)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    append(&log, 3_000, 4_000);
    checkpoints(&handle, 5).await;
    handle.stop();
    handle.wait().await.expect("stops");
    for s in &needed {
        let start = log.start_offset(s.partition).expect("start");
        assert!(
            start <= s.offset,
            "partition {} starts at {start}, above the savepoint's {}",
            s.partition,
            s.offset
        );
    }
    assert!(
        needed
            .iter()
            .any(|s| log.start_offset(s.partition).expect("start") > LogOffset(0)),
        "the log was trimmed at all"
    );

    // And the savepoint still restores: a run from it reads every later record.
    let again = dir.path().join("again");
    let report = common::run_to_end(trimming_job(&again, true, StartFrom::Checkpoint(sp.id)))
        .await
        .expect("runs from the savepoint");
    assert_eq!(report.restored_from, Some(sp.id));
    let expected: std::collections::BTreeMap<u64, u64> = (0..KEYS).map(|k| (k, 400)).collect();
    assert_eq!(final_counts(&again), expected, "4,000 records over 10 keys");
}

#[actix_rt::test]
async fn a_job_without_configured_storage_checkpoints_to_a_local_directory() {
    let name = format!("default-storage-{}", std::process::id());
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    append(&log, 0, 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let build = |root: Option<&Path>| {
        let job = JobBuilder::with_config(&name, config(1, StartFrom::Latest));
        if let Some(root) = root {
            job.checkpoint_dir(root);
        }
        job.source(
            "source",
            LogSource::<(u64, u64)>::msgpack(Arc::clone(&log)).bounded(),
        )
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", snapflow::CollectSink::new());
        job
    };
    // The default: ./snapflow/<job>/ (a job name of this process alone, removed after).
    let default = Path::new(snapflow::DEFAULT_CHECKPOINT_DIR).join(&name);
    let ran = common::run_to_end(build(None)).await;
    let kept = std::fs::read_dir(&default).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&default);
    let _ = std::fs::remove_dir(snapflow::DEFAULT_CHECKPOINT_DIR);
    ran.expect("runs");
    assert!(
        kept > 0,
        "checkpoints were written under {}",
        default.display()
    );

    // checkpoint_dir moves them; a second start on the same directory reads nothing and says
    // that the input had already ended.
    let first = common::run_to_end(build(Some(dir.path())))
        .await
        .expect("runs");
    assert!(!first.resumed_after_end);
    let store = LocalCheckpointStorage::new(dir.path(), &name).expect("storage");
    let last = store
        .latest_complete()
        .expect("read")
        .expect("a checkpoint");
    assert!(
        last.manifest.input_ended,
        "the final checkpoint says the input ended"
    );
    let again = common::run_to_end(build(Some(dir.path())))
        .await
        .expect("runs again");
    assert_eq!(again.end, JobEnd::InputEnded);
    assert_eq!(again.restored_from, Some(last.id()));
    assert!(again.resumed_after_end);
}
