//! The `snapflow` command-line tool, run as a binary on the checkpoint folder and the log of a
//! real job, and on corrupt and foreign input (a clear message and exit code 1, never a panic).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{check_updates, count_sink, poll_until};
use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::{FileSink, StartFrom};

const KEYS: u64 = 10;

fn snapflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapflow"))
        .args(args)
        .output()
        .expect("run the snapflow binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `args`, requires exit code `code` (and no panic), returns what it printed.
fn expect(args: &[&str], code: i32) -> String {
    let o = snapflow(args);
    let out = text(&o);
    assert!(
        !out.contains("panicked"),
        "snapflow {args:?} panicked: {out}"
    );
    assert_eq!(o.status.code(), Some(code), "snapflow {args:?}: {out}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn job(
    dir: &Path,
    log: &Arc<dyn ReplayableLog>,
    p: u32,
    start: StartFrom,
    bounded: bool,
) -> JobBuilder {
    let config = JobConfig {
        parallelism: p,
        threads: Threads::Arbiters(2),
        checkpoints: CheckpointTiming::every(Duration::from_millis(20)),
        start_from: start,
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("cli", config);
    job.checkpoint_dir(dir.join("chk"));
    let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(log));
    if bounded {
        source = source.bounded();
    }
    job.source("source", source)
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", count_sink(&dir.join("out")));
    job
}

/// Opens the 2-partition FileLog in `dir` and appends records `from..to` as `(i % KEYS, 1)`,
/// synced.
fn append(dir: &Path, from: u64, to: u64) -> Arc<dyn ReplayableLog> {
    let log: Arc<dyn ReplayableLog> =
        Arc::new(FileLog::open(dir, FileLogOptions::with_partitions(2)).expect("log"));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    for i in from..to {
        typed
            .append(PartitionId((i % 2) as u32), &(i % KEYS, 1))
            .expect("append");
    }
    log.sync().expect("sync");
    log
}

/// A job's checkpoint folder with a savepoint, and its FileLog: (job dir, savepoint dir, log dir).
async fn real_job(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let log_dir = dir.join("log");
    let log = append(&log_dir, 0, 2_000);
    let handle = job(dir, &log, 2, StartFrom::Latest, false)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let out = dir.join("out");
    assert!(
        poll_until(Duration::from_secs(30), || {
            FileSink::<(u64, u64)>::read_committed(&out).map_or(0, |l| l.len()) >= 2_000
        })
        .await
    );
    let sp = handle.stop_with_savepoint().await.expect("savepoint");
    handle.wait().await.expect("stops");
    (
        dir.join("chk").join("cli"),
        PathBuf::from(sp.location),
        log_dir,
    )
}

#[actix_rt::test]
async fn the_cli_lists_verifies_inspects_dumps_and_rescales_a_real_checkpoint_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobdir, sp, logdir) = real_job(tmp.path()).await;

    let listed = expect(&["checkpoints", "list", s(&jobdir), "--json"], 0);
    let rows: serde_json::Value = serde_json::from_str(listed.trim()).expect("JSON");
    let rows = rows.as_array().expect("an array");
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "savepoint" && r["verified"] == true),
        "{listed}"
    );
    assert!(
        rows.iter().all(|r| r["parallelism"]["sum"] == 2),
        "{listed}"
    );
    let table = expect(&["checkpoints", "list", s(&jobdir)], 0);
    assert!(
        table.contains("savepoint") && table.contains("sum(2)"),
        "{table}"
    );

    let verified = expect(&["checkpoints", "verify", s(&jobdir)], 0);
    assert!(verified.contains(", 0 problems"), "{verified}");

    let inspected = expect(&["checkpoints", "inspect", s(&sp), "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(inspected.trim()).expect("JSON");
    let keyed: Vec<&serde_json::Value> = v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["vertex"] == "sum")
        .collect();
    assert_eq!(keyed.len(), 2);
    let entries: u64 = keyed
        .iter()
        .flat_map(|t| t["states"].as_array().expect("states").iter())
        .filter(|s| s["name"] == "snapflow.reduce")
        .map(|s| s["entries"].as_u64().expect("entries"))
        .sum();
    assert_eq!(entries, KEYS, "one reduce entry per key: {inspected}");

    let dumped = expect(
        &[
            "state",
            "dump",
            s(&sp),
            "--vertex",
            "sum",
            "--state",
            "snapflow.reduce",
            "--key",
            "3",
        ],
        0,
    );
    let line: serde_json::Value = serde_json::from_str(dumped.trim()).expect("one JSON line");
    assert_eq!(line["key"], 3);
    assert_eq!(
        line["value"],
        serde_json::json!([3, 200]),
        "key 3 counted 200 times"
    );

    // Rescale the savepoint to 3 tasks, and restore a job from it at 3: exactly once.
    let rescaled = tmp.path().join("rescaled");
    let said = expect(
        &[
            "savepoint",
            "rescale",
            s(&sp),
            s(&rescaled),
            "--vertex",
            "sum",
            "--parallelism",
            "3",
        ],
        0,
    );
    assert!(said.contains("wrote savepoint"), "{said}");
    let inspected = expect(&["checkpoints", "inspect", s(&rescaled)], 0);
    assert!(inspected.contains("sum[2]"), "three tasks: {inspected}");
    let log = append(&logdir, 2_000, 3_000);
    let start = StartFrom::Savepoint(s(&rescaled).to_string());
    let report = common::run_to_end(job(tmp.path(), &log, 3, start, true))
        .await
        .expect("runs from the rescaled savepoint");
    assert!(report.restored_from.is_some());
    assert_eq!(
        check_updates(&tmp.path().join("out"), 3_000, KEYS),
        (3_000, 0, 0)
    );

    let info = expect(&["log", "info", s(&logdir), "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(info.trim()).expect("JSON");
    assert_eq!(v["partitions"][0]["end"], 1_500, "{info}");
    assert_eq!(v["partitions"][1]["records"], 1_500, "{info}");
    expect(&["log", "verify", s(&logdir)], 0);
    expect(&["--help"], 0);
    expect(&["checkpoints", "verify", "--help"], 0);
}

/// Flips one byte of `file` at `at` (from the end when negative).
fn flip(file: &Path, at: i64) {
    let mut b = std::fs::read(file).expect("read");
    let i = if at < 0 { b.len() as i64 + at } else { at } as usize;
    b[i] ^= 0x5a;
    std::fs::write(file, b).expect("write");
}

#[actix_rt::test]
async fn the_cli_reports_corrupt_and_foreign_input_with_exit_code_1_and_never_panics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (jobdir, sp, logdir) = real_job(tmp.path()).await;

    // A flipped byte in a state file: verify names the file.
    let state = std::fs::read_dir(&sp)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("task-sum-0"))
        .expect("a state file");
    flip(&state, -3);
    let out = expect(&["checkpoints", "verify", s(&jobdir)], 1);
    assert!(
        out.contains("task-sum-0.state") && out.contains("checksum"),
        "{out}"
    );
    let out = expect(&["checkpoints", "inspect", s(&sp)], 1);
    assert!(out.contains("corrupt"), "{out}");

    // A truncated manifest.
    let manifest = sp.join("_manifest");
    let bytes = std::fs::read(&manifest).expect("read");
    std::fs::write(&manifest, &bytes[..bytes.len() / 2]).expect("truncate");
    let out = expect(&["checkpoints", "verify", s(&jobdir)], 1);
    assert!(out.contains("_manifest"), "{out}");
    expect(
        &["state", "dump", s(&sp), "--vertex", "sum", "--state", "x"],
        1,
    );

    // Foreign input: a file of garbage as a manifest, a directory that is not a log, a path
    // that does not exist, bad arguments.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(foreign.join("_manifest"), b"not a snapflow manifest at all").expect("write");
    let out = expect(&["checkpoints", "inspect", s(&foreign)], 1);
    assert!(out.starts_with("snapflow: "), "{out}");
    let out = expect(&["log", "info", s(&foreign)], 1);
    assert!(out.contains("not a snapflow log"), "{out}");
    expect(&["checkpoints", "list", s(&tmp.path().join("missing"))], 1);
    expect(&["checkpoints", "inspect", s(&jobdir), "not-an-id"], 1);
    expect(
        &[
            "savepoint",
            "rescale",
            s(&sp),
            s(&tmp.path().join("x")),
            "--vertex",
            "sum",
            "--parallelism",
            "0",
        ],
        1,
    );
    assert_eq!(
        snapflow(&["no-such-command"]).status.code(),
        Some(2),
        "usage errors"
    );

    // The log: a torn tail is recoverable (exit 0); a flipped byte inside is corruption.
    let segment = std::fs::read_dir(logdir.join("p-00000"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    // An append torn by a crash: part of a frame after the last sync.
    let mut torn = std::fs::read(&segment).expect("read");
    torn.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    std::fs::write(&segment, torn).expect("tear the tail");
    let out = expect(&["log", "verify", s(&logdir)], 0);
    assert!(out.contains("recoverable"), "{out}");
    flip(&segment, 100);
    let out = expect(&["log", "verify", s(&logdir), "--json"], 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    let p = &v["problems"][0];
    assert_eq!(p["recoverable"], false, "{out}");
    assert!(p["file"].as_str().expect("file").ends_with(".log"), "{out}");
    assert!(p["offset"].as_u64().expect("offset") <= 100, "{out}");
}

/// The checkpoint commands on a job's checkpoints in an object store, named by URL (here
/// `file://`, object_store's local-file backend; `s3://` goes the same way): list, verify,
/// inspect and dump work as on a directory, and a flipped byte in a state object is found.
#[cfg(feature = "object-store")]
#[actix_rt::test]
async fn the_cli_reads_checkpoints_in_an_object_store_by_url() {
    use snapflow::checkpoint::ObjectStoreCheckpointStorage;

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("bucket");
    std::fs::create_dir_all(&root).expect("mkdir");
    let root = root.canonicalize().expect("canonical");
    let store = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(&root).expect("local store"),
    );
    let storage =
        Arc::new(ObjectStoreCheckpointStorage::new(store, "jobs", "cli").expect("storage"));
    let log = append(&tmp.path().join("log"), 0, 2_000);
    let job = job(tmp.path(), &log, 2, StartFrom::Latest, false);
    job.checkpoint_storage(storage);
    let handle = job.build().expect("build").start().await.expect("start");
    let out = tmp.path().join("out");
    assert!(
        poll_until(Duration::from_secs(30), || {
            FileSink::<(u64, u64)>::read_committed(&out).map_or(0, |l| l.len()) >= 2_000
        })
        .await
    );
    let sp = handle.stop_with_savepoint().await.expect("savepoint");
    handle.wait().await.expect("stops");

    let url = format!("file://{}/jobs/cli", root.display());
    let listed = expect(&["checkpoints", "list", &url, "--json"], 0);
    let rows: serde_json::Value = serde_json::from_str(listed.trim()).expect("JSON");
    assert!(
        rows.as_array()
            .expect("rows")
            .iter()
            .any(|r| r["kind"] == "savepoint" && r["verified"] == true),
        "{listed}"
    );
    let verified = expect(&["checkpoints", "verify", &url], 0);
    assert!(verified.contains(", 0 problems"), "{verified}");
    let at = format!("file://{}/{}", root.display(), sp.location);
    let inspected = expect(&["checkpoints", "inspect", &at, "--json"], 0);
    assert!(inspected.contains("\"sum\""), "{inspected}");
    let dumped = expect(
        &[
            "state",
            "dump",
            &url,
            "--vertex",
            "sum",
            "--state",
            "snapflow.reduce",
            "--key",
            "3",
        ],
        0,
    );
    let line: serde_json::Value = serde_json::from_str(dumped.trim()).expect("one JSON line");
    assert_eq!(line["value"], serde_json::json!([3, 200]), "{dumped}");

    let state = std::fs::read_dir(root.join(&sp.location))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains("task-sum-0"))
        .expect("a state object");
    flip(&state, -3);
    let out = expect(&["checkpoints", "verify", &url], 1);
    assert!(out.contains("task-sum-0"), "{out}");
    expect(&["checkpoints", "list", "s3:/not a url"], 1);
}
