//! `ObjectStoreCheckpointStorage` on the in-memory and local-file-system stores of the
//! `object_store` crate: the same guarantees as the local directory storage (complete only
//! with a manifest, fallback past corrupt checkpoints, retention that keeps savepoints), plus
//! multipart uploads and a conditional create that lets only one writer complete an id.
//! (`tests/s3.rs` runs against an S3 server.)

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use snapflow::chaos::ChaosMonkey;
use snapflow::checkpoint::{
    CheckpointId, CheckpointKind, CheckpointStorage, Manifest, ObjectStoreCheckpointStorage,
    TaskId, TaskStateEntry,
};
use snapflow::{Error, ErrorClass, Threads};

use common::{chaos_config, check_updates, counting_log, keyed_job, Stage};

fn memory_store() -> Arc<dyn ObjectStore> {
    Arc::new(InMemory::new())
}

fn task(i: u32) -> TaskId {
    TaskId::new("op", i).expect("task id")
}

/// Writes checkpoint `id` with two tasks whose state is `state(i)`, and commits it as `kind`.
fn write_checkpoint(
    storage: &ObjectStoreCheckpointStorage,
    id: u64,
    kind: CheckpointKind,
    state: impl Fn(u32) -> Vec<u8>,
) -> Manifest {
    let id = CheckpointId(id);
    let mut manifest = Manifest::new(storage.job(), id, 128);
    manifest.kind = kind;
    manifest.parallelism.insert("op".into(), 2);
    for i in 0..2 {
        let handle = storage
            .write_task_state(id, &task(i), &state(i))
            .expect("write state");
        manifest.tasks.push(TaskStateEntry {
            task: task(i),
            state: handle,
            key_groups: None,
        });
    }
    storage.commit(&manifest).expect("commit");
    manifest
}

fn state_of(id: u64) -> impl Fn(u32) -> Vec<u8> {
    move |i| format!("state of task {i} at checkpoint {id}").into_bytes()
}

/// The object path of the state object of task `i` in checkpoint `id`.
fn state_object(
    storage: &ObjectStoreCheckpointStorage,
    manifest: &Manifest,
    i: usize,
) -> ObjectPath {
    storage
        .checkpoint_path(manifest.checkpoint)
        .join(manifest.tasks[i].state.file.as_str())
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

#[test]
fn object_store_checkpoints_read_back_what_was_written_and_retention_keeps_the_newest_and_savepoints(
) {
    let storage = ObjectStoreCheckpointStorage::new(memory_store(), "jobs", "ret")
        .expect("storage")
        .with_retain(2);
    write_checkpoint(&storage, 1, CheckpointKind::Savepoint, state_of(1));
    for id in 2..=5 {
        write_checkpoint(&storage, id, CheckpointKind::Checkpoint, state_of(id));
    }
    let ids: Vec<u64> = storage
        .completed_ids()
        .expect("ids")
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        ids,
        vec![1, 4, 5],
        "the savepoint and the newest 2 checkpoints"
    );
    let latest = storage.latest_complete().expect("latest").expect("some");
    assert_eq!(latest.id(), CheckpointId(5));
    assert_eq!(latest.location, "jobs/ret/chk-00000000000000000005");
    for (i, t) in latest.manifest.tasks.iter().enumerate() {
        let bytes = storage
            .read_task_state(latest.id(), &t.state)
            .expect("read");
        assert_eq!(bytes, state_of(5)(i as u32));
    }
    assert_eq!(storage.max_id().expect("max"), Some(CheckpointId(5)));
    // An incomplete checkpoint counts for max_id, never for restores, and aborts cleanly.
    storage
        .write_task_state(CheckpointId(6), &task(0), b"half")
        .expect("write");
    assert_eq!(storage.max_id().expect("max"), Some(CheckpointId(6)));
    assert_eq!(
        storage
            .latest_complete()
            .expect("latest")
            .expect("some")
            .id(),
        CheckpointId(5)
    );
    storage.abort(CheckpointId(6)).expect("abort");
    assert_eq!(storage.max_id().expect("max"), Some(CheckpointId(5)));
    assert!(matches!(
        storage.abort(CheckpointId(5)),
        Err(Error::Config(_))
    ));
}

#[test]
fn object_store_checkpoints_fall_back_past_a_corrupted_checkpoint() {
    let store = memory_store();
    let storage = ObjectStoreCheckpointStorage::new(store.clone(), "", "corrupt").expect("storage");
    write_checkpoint(&storage, 1, CheckpointKind::Checkpoint, state_of(1));
    let newest = write_checkpoint(&storage, 2, CheckpointKind::Checkpoint, state_of(2));
    // One byte of task 1's state changes behind the storage's back (same size).
    let path = state_object(&storage, &newest, 1);
    let got = block_on(store.get(&path)).expect("get");
    let mut flipped = block_on(got.bytes()).expect("bytes").to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    block_on(store.put(&path, PutPayload::from(flipped))).expect("put");

    let err = storage.verify(CheckpointId(2)).expect_err("checksum");
    assert!(
        matches!(&err, Error::CheckpointCorrupt { checkpoint, reason, .. }
            if *checkpoint == CheckpointId(2) && reason.contains("checksum")),
        "{err}"
    );
    let latest = storage.latest_complete().expect("latest").expect("some");
    assert_eq!(
        latest.id(),
        CheckpointId(1),
        "the corrupted checkpoint 2 is skipped"
    );
    // Every checkpoint corrupted: never a silent start from nothing.
    block_on(store.delete(&state_object(&storage, &latest.manifest, 0))).expect("delete");
    assert!(matches!(
        storage.latest_complete(),
        Err(Error::NoValidCheckpoint { rejected, .. }) if rejected.len() == 2
    ));
}

#[test]
fn object_store_checkpoints_fall_back_past_a_half_uploaded_checkpoint() {
    let store = memory_store();
    let storage = ObjectStoreCheckpointStorage::new(store.clone(), "p", "half")
        .expect("storage")
        .with_multipart(1024, 1024)
        .expect("multipart");
    write_checkpoint(&storage, 1, CheckpointKind::Checkpoint, state_of(1));
    // Checkpoint 2: a multipart upload of a task's state was started and one part stored,
    // but the writer died before completing it: nothing of it is visible, and no manifest.
    let path = storage
        .checkpoint_path(CheckpointId(2))
        .join(task(0).to_string().as_str());
    let mut upload = block_on(store.put_multipart(&path)).expect("start");
    block_on(upload.put_part(PutPayload::from(vec![7u8; 2048]))).expect("part");
    drop(upload);
    // Checkpoint 3: a manifest made by hand names a state object cut short (another tool,
    // or a store that lost the tail).
    let cut = write_checkpoint(&storage, 3, CheckpointKind::Checkpoint, |_| vec![9u8; 5000]);
    let object = state_object(&storage, &cut, 0);
    block_on(store.put(&object, PutPayload::from(vec![9u8; 100]))).expect("put");

    assert_eq!(
        storage.completed_ids().expect("ids"),
        vec![CheckpointId(1), CheckpointId(3)]
    );
    let err = storage.verify(CheckpointId(3)).expect_err("short object");
    assert!(matches!(err, Error::CheckpointCorrupt { .. }), "{err}");
    let latest = storage.latest_complete().expect("latest").expect("some");
    assert_eq!(latest.id(), CheckpointId(1));
    // A commit refuses a manifest whose state object is not all there.
    let id = CheckpointId(4);
    let handle = storage
        .write_task_state(id, &task(0), &[1u8; 3000])
        .expect("write");
    let object = storage.checkpoint_path(id).join(handle.file.as_str());
    block_on(store.put(&object, PutPayload::from(vec![1u8; 10]))).expect("put");
    let mut manifest = Manifest::new("half", id, 128);
    manifest.parallelism.insert("op".into(), 1);
    manifest.tasks.push(TaskStateEntry {
        task: task(0),
        state: handle,
        key_groups: None,
    });
    let err = storage.commit(&manifest).expect_err("short state");
    assert!(matches!(err, Error::CheckpointCorrupt { .. }), "{err}");
    assert_eq!(
        storage
            .latest_complete()
            .expect("latest")
            .expect("some")
            .id(),
        CheckpointId(1)
    );
}

#[test]
fn object_store_multipart_uploads_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
    let storage = ObjectStoreCheckpointStorage::new(store, "chk", "multi")
        .expect("storage")
        .with_multipart(64 << 10, 16 << 10)
        .expect("multipart");
    let big = |i: u32| {
        (0..300_000u32)
            .map(|x| (x.wrapping_mul(2_654_435_761) >> 24) as u8 ^ i as u8)
            .collect()
    };
    let manifest = write_checkpoint(&storage, 1, CheckpointKind::Checkpoint, big);
    for (i, t) in manifest.tasks.iter().enumerate() {
        assert_eq!(
            storage
                .read_task_state(CheckpointId(1), &t.state)
                .expect("read"),
            big(i as u32)
        );
    }
    assert!(
        storage.with_multipart(1, 0).is_err(),
        "a part size of 0 is refused"
    );
}

#[test]
fn two_writers_racing_to_complete_one_checkpoint_id_cannot_both_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
    for round in 0..20u64 {
        let id = round + 1;
        let writers: Vec<ObjectStoreCheckpointStorage> = (0..2)
            .map(|_| ObjectStoreCheckpointStorage::new(store.clone(), "", "race").expect("storage"))
            .collect();
        let start = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(w, storage)| {
                    let start = &start;
                    s.spawn(move || {
                        let state =
                            move |i: u32| format!("writer {w} task {i} round {round}").into_bytes();
                        let id = CheckpointId(id);
                        let mut manifest = Manifest::new("race", id, 128);
                        manifest.parallelism.insert("op".into(), 2);
                        for i in 0..2 {
                            let state = storage.write_task_state(id, &task(i), &state(i))?;
                            manifest.tasks.push(TaskStateEntry {
                                task: task(i),
                                state,
                                key_groups: None,
                            });
                        }
                        start.wait();
                        storage.commit(&manifest).map(|()| w)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("writer"))
                .collect()
        });
        let won: Vec<usize> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one writer completes: {results:?}"
        );
        let lost = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("a loser");
        assert!(
            matches!(lost, Error::CheckpointExists { checkpoint, .. } if checkpoint.0 == id),
            "round {round}: {lost}"
        );
        assert_eq!(lost.class(), ErrorClass::Fatal);
        // The winner's checkpoint is intact: the loser's state objects never replaced its own.
        let done = writers[0]
            .verify(CheckpointId(id))
            .expect("the winner's checkpoint verifies");
        let state = writers[0]
            .read_task_state(CheckpointId(id), &done.manifest.tasks[1].state)
            .expect("read");
        assert_eq!(
            state,
            format!("writer {} task 1 round {round}", won[0]).into_bytes()
        );
    }
}

#[test]
fn a_savepoint_copied_to_another_prefix_verifies_and_reads_there() {
    let store = memory_store();
    let storage = ObjectStoreCheckpointStorage::new(store.clone(), "a", "sp").expect("storage");
    write_checkpoint(&storage, 3, CheckpointKind::Savepoint, state_of(3));
    let from = storage.checkpoint_path(CheckpointId(3));
    let to = ObjectPath::from("elsewhere/savepoint-3");
    let objects: Vec<ObjectPath> = block_on(async {
        use futures::TryStreamExt;
        store
            .list(Some(&from))
            .map_ok(|m| m.location)
            .try_collect()
            .await
    })
    .expect("list");
    for o in objects {
        let name = o.filename().expect("name").to_string();
        block_on(store.copy(&o, &to.clone().join(name.as_str()))).expect("copy");
    }
    let reader = ObjectStoreCheckpointStorage::reader(store).expect("reader");
    let found = reader
        .verify_location("elsewhere/savepoint-3")
        .expect("verify");
    assert_eq!(found.id(), CheckpointId(3));
    assert_eq!(found.manifest.kind, CheckpointKind::Savepoint);
    let bytes = reader
        .read_task_state_at("elsewhere/savepoint-3", &found.manifest.tasks[0].state)
        .expect("read");
    assert_eq!(bytes, state_of(3)(0));
    assert!(matches!(
        reader.verify_location("elsewhere/nothing"),
        Err(Error::NothingAtLocation { .. })
    ));
}

/// A keyed job checkpointing to an object store (local files) under chaos kills: every
/// restore reads its state back from the store, and the committed output is exact.
#[test]
fn a_job_checkpointing_to_an_object_store_is_exactly_once_under_kills() {
    for seed in 0..3u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
        let name = format!("object-chaos-{seed}");
        let storage = Arc::new(
            ObjectStoreCheckpointStorage::new(store, "checkpoints", &name).expect("storage"),
        );
        let (n, keys) = (12_000, 20);
        let out = dir.path().join("out");
        let job = keyed_job(
            &name,
            chaos_config(Threads::Arbiters(2)),
            storage.clone(),
            counting_log(n, keys, 2),
            &out,
            Stage::new(150),
        );
        job.chaos(
            ChaosMonkey::new(seed)
                .random_interval(Duration::from_millis(10), Duration::from_millis(40))
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
            "seed {seed}: events {:?}",
            report.events
        );
        assert!(report.kills > 0, "seed {seed}: no kill happened");
        assert!(
            !storage.completed_ids().expect("ids").is_empty(),
            "seed {seed}: the job completed checkpoints in the store"
        );
    }
}
