//! `ObjectStoreCheckpointStorage` against an S3 server: moto, the AWS mock, on a local port.
//!
//! The server is the one `SNAPFLOW_S3_ENDPOINT` names (`.ci/run` starts one and stops it by
//! process id); without it, the tests start `moto_server` themselves from
//! `target/moto-venv` (creating that virtualenv with pip the first time) on a free port, and
//! a watcher stops it once this test process has gone.

mod common;
#[path = "../examples/common/s3.rs"]
mod s3_setup;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use snapflow::chaos::ChaosMonkey;
use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, Manifest, ObjectStoreCheckpointStorage, TaskId, TaskStateEntry,
};
use snapflow::{Error, ErrorClass, Threads};

use common::{chaos_config, check_updates, counting_log, keyed_job, Stage};

/// The S3 endpoint of the tests (see the module documentation).
fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| match std::env::var("SNAPFLOW_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => start_moto(),
    })
}

fn start_moto() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = format!("{root}/target/moto-venv");
    let server = format!("{venv}/bin/moto_server");
    if !std::path::Path::new(&server).exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv", &venv])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(format!("{venv}/bin/pip"))
                .args(["install", "-q", "moto[server]"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not install moto into {venv} (python3 -m venv; pip install 'moto[server]')"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // moto runs under a watcher that stops it when this process is gone: the test harness
    // never runs destructors of statics.
    let script = format!(
        "{server} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {} 2>/dev/null; do sleep 1; done; kill $m",
        std::process::id()
    );
    // Never waited for: the watcher outlives this process by design, ending after it.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .expect("start moto");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto did not listen on port {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://127.0.0.1:{port}")
}

/// A new bucket on the test server.
fn bucket(name: &str) -> Arc<dyn ObjectStore> {
    s3_setup::create_bucket(endpoint(), name).expect("create the bucket");
    s3_setup::s3_store(endpoint(), name, 3)
}

/// Runs `f` on a tokio runtime of its own: the S3 client needs one.
fn on_tokio<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn task(i: u32) -> TaskId {
    TaskId::new("op", i).expect("task id")
}

/// Writes and commits checkpoint `id` of two tasks with the given states.
fn checkpoint(
    storage: &ObjectStoreCheckpointStorage,
    id: u64,
    states: &[Vec<u8>],
) -> Result<Manifest, Error> {
    let id = CheckpointId(id);
    let mut manifest = Manifest::new(storage.job(), id, 128);
    manifest
        .parallelism
        .insert("op".into(), states.len() as u32);
    for (i, s) in states.iter().enumerate() {
        let state = storage.write_task_state(id, &task(i as u32), s)?;
        manifest.tasks.push(TaskStateEntry {
            task: task(i as u32),
            state,
            key_groups: None,
        });
    }
    storage.commit(&manifest).map(|()| manifest)
}

#[test]
fn s3_checkpoints_read_back_multipart_states_and_fall_back_past_a_corrupted_one() {
    let store = bucket("roundtrip");
    let storage = ObjectStoreCheckpointStorage::new(store.clone(), "snapflow", "s3-roundtrip")
        .expect("storage")
        .with_multipart(6 << 20, 5 << 20)
        .expect("multipart");
    // 13 MiB: a multipart upload of 3 parts; and a small one in a single PUT.
    let big: Vec<u8> = (0..13u32 << 20)
        .map(|x| (x.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let small = b"small state".to_vec();
    checkpoint(&storage, 1, &[big.clone(), small.clone()]).expect("checkpoint 1");
    let newest = checkpoint(&storage, 2, &[big.clone(), small.clone()]).expect("checkpoint 2");
    let latest = storage.latest_complete().expect("latest").expect("some");
    assert_eq!(latest.id(), CheckpointId(2));
    assert_eq!(
        storage
            .read_task_state(latest.id(), &latest.manifest.tasks[0].state)
            .expect("read"),
        big
    );
    assert_eq!(
        storage
            .read_task_state(latest.id(), &latest.manifest.tasks[1].state)
            .expect("read"),
        small
    );
    // The small state of checkpoint 2 is overwritten with other bytes of the same length.
    let path = storage
        .checkpoint_path(CheckpointId(2))
        .join(newest.tasks[1].state.file.as_str());
    let mut other = on_tokio(async { store.get(&path).await?.bytes().await })
        .expect("get")
        .to_vec();
    let last = other.len() - 1;
    other[last] ^= 1;
    on_tokio(store.put(&path, PutPayload::from(other))).expect("put");
    assert_eq!(
        storage
            .latest_complete()
            .expect("latest")
            .expect("some")
            .id(),
        CheckpointId(1),
        "the corrupted checkpoint 2 is skipped"
    );
}

#[test]
fn two_writers_racing_on_s3_cannot_both_complete_one_checkpoint_id() {
    let store = bucket("race");
    for id in 1..=5u64 {
        let writers: Vec<ObjectStoreCheckpointStorage> = (0..2)
            .map(|_| {
                ObjectStoreCheckpointStorage::new(store.clone(), "", "s3-race").expect("storage")
            })
            .collect();
        let barrier = Barrier::new(2);
        let results: Vec<Result<usize, Error>> = std::thread::scope(|s| {
            let runs: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(w, storage)| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let cid = CheckpointId(id);
                        let mut manifest = Manifest::new("s3-race", cid, 128);
                        manifest.parallelism.insert("op".into(), 1);
                        let state = format!("writer {w}").into_bytes();
                        let state = storage.write_task_state(cid, &task(0), &state)?;
                        manifest.tasks.push(TaskStateEntry {
                            task: task(0),
                            state,
                            key_groups: None,
                        });
                        barrier.wait();
                        storage.commit(&manifest).map(|()| w)
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("writer"))
                .collect()
        });
        let won: Vec<usize> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(won.len(), 1, "checkpoint {id}: {results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(Error::CheckpointExists { .. }))),
            "checkpoint {id}: {results:?}"
        );
        let done = writers[1]
            .verify(CheckpointId(id))
            .expect("the winner's checkpoint verifies");
        let state = writers[1]
            .read_task_state(CheckpointId(id), &done.manifest.tasks[0].state)
            .expect("read");
        assert_eq!(state, format!("writer {}", won[0]).into_bytes());
    }
}

#[test]
fn an_unreachable_s3_endpoint_fails_as_retryable_after_the_clients_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // Nothing listens on `port` once the listener above is dropped.
    let store = s3_setup::s3_store(&format!("http://127.0.0.1:{port}"), "nowhere", 2);
    let storage = ObjectStoreCheckpointStorage::new(store, "", "s3-down").expect("storage");
    let started = Instant::now();
    let err = storage
        .write_task_state(CheckpointId(1), &task(0), b"state")
        .expect_err("no server");
    assert!(matches!(err, Error::Remote { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    // Two retries with backoff from 20 ms took some time, and not the default minutes.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(20) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert!(matches!(
        storage.latest_complete(),
        Err(Error::Remote { .. })
    ));
}

/// A keyed job checkpointing to S3 under chaos kills: every restore reads its state back from
/// the server, and the committed output is exact.
#[test]
fn a_job_checkpointing_to_s3_is_exactly_once_under_kills() {
    let store = bucket("jobs");
    for seed in 0..2u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("s3-chaos-{seed}");
        let storage = Arc::new(
            ObjectStoreCheckpointStorage::new(store.clone(), "checkpoints", &name)
                .expect("storage"),
        );
        let (n, keys) = (12_000, 20);
        let out = dir.path().join("out");
        let mut config = chaos_config(Threads::Arbiters(2));
        config.checkpoints =
            snapflow::checkpoint::CheckpointTiming::every(Duration::from_millis(50))
                .with_timeout(Duration::from_secs(10));
        let job = keyed_job(
            &name,
            config,
            storage.clone(),
            counting_log(n, keys, 2),
            &out,
            Stage::new(100),
        );
        job.chaos(
            ChaosMonkey::new(seed)
                .random_interval(Duration::from_millis(100), Duration::from_millis(300))
                .max_kills(3),
        );
        let report = job
            .build()
            .expect("build")
            .run()
            .unwrap_or_else(|e| panic!("seed {seed}: the job failed: {e}"));
        assert_eq!(
            check_updates(&out, n, keys),
            (n, 0, 0),
            "seed {seed}: {:?}",
            report.events
        );
        assert!(report.kills > 0, "seed {seed}: no kill happened");
        assert!(
            !storage.completed_ids().expect("ids").is_empty(),
            "seed {seed}: no checkpoint in S3"
        );
    }
}
