//! Checkpoint storage: atomic manifests, verification with fallback, retention, abort, names.

use std::fs;
use std::path::PathBuf;

use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, LocalCheckpointStorage, Manifest, MemoryCheckpointStorage,
    SourceOffset, TaskId, TaskStateEntry,
};
use snapflow::state::KeyGroupRange;
use snapflow::{Error, LogOffset, PartitionId};

const JOB: &str = "wordcount";

/// Writes checkpoint `id` with two tasks whose state bytes depend on `id`.
fn write_checkpoint(storage: &dyn CheckpointStorage, id: u64) -> Manifest {
    let cid = CheckpointId(id);
    let mut m = Manifest::new(JOB, cid, 128);
    for i in 0..2u32 {
        let task = TaskId::new("count", i).expect("task");
        let bytes: Vec<u8> = (0..200u32)
            .map(|b| (b as u64 * id + u64::from(i)) as u8)
            .collect();
        let state = storage
            .write_task_state(cid, &task, &bytes)
            .expect("write state");
        m.tasks.push(TaskStateEntry {
            task: task.clone(),
            state,
            key_groups: Some(KeyGroupRange::for_task(i, 2, 128).expect("range")),
        });
    }
    m.parallelism.insert("count".into(), 2);
    m.sources.push(SourceOffset {
        task: TaskId::new("source", 0).expect("task"),
        partition: PartitionId(0),
        offset: LogOffset(id * 100),
    });
    storage.commit(&m).expect("commit");
    m
}

fn local(dir: &tempfile::TempDir) -> LocalCheckpointStorage {
    LocalCheckpointStorage::new(dir.path(), JOB).expect("storage")
}

fn files_of(storage: &LocalCheckpointStorage, id: u64) -> Vec<PathBuf> {
    let d = storage.checkpoint_dir(CheckpointId(id));
    let mut v: Vec<PathBuf> = fs::read_dir(d)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn a_committed_checkpoint_round_trips_with_its_state_and_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local(&dir);
    assert_eq!(
        s.latest_complete().expect("latest"),
        None,
        "no checkpoint yet"
    );
    let m = write_checkpoint(&s, 1);
    let c = s
        .latest_complete()
        .expect("latest")
        .expect("one checkpoint");
    assert_eq!(c.manifest, m);
    let t = &c.manifest.tasks[1];
    let bytes = s.read_task_state(c.id(), &t.state).expect("read");
    assert_eq!(bytes.len(), 200);
    assert_eq!(bytes[3], 4);
    assert_eq!(c.manifest.sources[0].offset, LogOffset(100));
}

/// Where direct I/O can be tried: the usual temp directory and, when there is one, a tmpfs
/// (which may refuse it, and then must fall back to buffered writes).
fn direct_io_dirs() -> Vec<tempfile::TempDir> {
    let mut dirs = vec![tempfile::tempdir().expect("tempdir")];
    if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
        dirs.push(d);
    }
    dirs
}

#[test]
fn state_files_written_with_direct_io_read_back_exactly_at_every_size_around_a_block() {
    for dir in direct_io_dirs() {
        let s = local(&dir).with_direct_io(Some(0));
        let task = TaskId::new("count", 0).expect("task");
        // Header (20 bytes) + payload around 4 KiB block boundaries, and a large one.
        let sizes = [0usize, 1, 4075, 4076, 4077, 8172, 100_000, (1 << 20) + 3];
        for (n, len) in sizes.into_iter().enumerate() {
            let id = CheckpointId(n as u64 + 1);
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
            let handle = s.write_task_state(id, &task, &bytes).expect("write");
            assert_eq!(handle.size, len as u64);
            assert_eq!(
                s.read_task_state(id, &handle).expect("read"),
                bytes,
                "len {len}"
            );
            let files = files_of(&s, id.0);
            assert_eq!(files.len(), 1, "a temp file was left: {files:?}");
            let on_disk = fs::metadata(&files[0]).expect("stat").len();
            assert_eq!(
                on_disk,
                20 + len as u64,
                "the block padding was not cut off"
            );
            // The same bytes given in parts (some empty) make the same file, directly or not.
            let cuts = [0, len / 3, len / 3, (len / 2 + 1).min(len), len];
            let parts: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            for (k, storage) in [
                local(&dir).with_direct_io(None),
                local(&dir).with_direct_io(Some(0)),
            ]
            .iter()
            .enumerate()
            {
                let pid = CheckpointId(1000 + 10 * n as u64 + k as u64);
                let h = storage
                    .write_task_state_parts(pid, &task, &parts)
                    .expect("write parts");
                assert_eq!((h.size, h.crc32c), (handle.size, handle.crc32c));
                assert_eq!(
                    fs::read(&files_of(storage, pid.0)[0]).expect("read"),
                    fs::read(&files[0]).expect("read"),
                    "len {len}, direct {}",
                    k == 1
                );
            }
        }
        // A whole checkpoint, committed and found again.
        let m = write_checkpoint(&s, 100);
        let c = s.latest_complete().expect("latest").expect("checkpoint");
        assert_eq!(c.manifest, m, "in {}", dir.path().display());
    }
}

#[test]
fn every_truncation_and_sampled_byte_flips_of_a_state_file_or_manifest_fall_back_to_the_previous_checkpoint(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    // State files written with direct I/O (every size), manifests buffered: both checked.
    let s = local(&dir).with_direct_io(Some(0));
    write_checkpoint(&s, 1);
    write_checkpoint(&s, 2);
    let mut checked = 0;
    for file in files_of(&s, 2) {
        let original = fs::read(&file).expect("read");
        let mut damage: Vec<Vec<u8>> = (0..original.len())
            .map(|cut| original[..cut].to_vec())
            .collect();
        for i in (0..original.len()).step_by(3) {
            let mut b = original.clone();
            b[i] ^= 1 << (i % 8);
            damage.push(b);
        }
        let mut longer = original.clone();
        longer.push(0);
        damage.push(longer);
        for bad in damage {
            fs::write(&file, &bad).expect("damage");
            let c = s
                .latest_complete()
                .expect("latest never fails on corruption");
            let id = c.map(|c| c.id());
            // A truncation to zero bytes of the manifest still leaves a manifest file, which
            // fails to verify: checkpoint 1 must be chosen every time.
            assert_eq!(
                id,
                Some(CheckpointId(1)),
                "{} damaged to {} bytes",
                file.display(),
                bad.len()
            );
            checked += 1;
        }
        fs::write(&file, &original).expect("restore");
        assert_eq!(
            s.latest_complete().expect("latest").map(|c| c.id()),
            Some(CheckpointId(2))
        );
    }
    assert!(checked > 500, "only {checked} damaged variants");
}

#[test]
fn a_missing_state_file_falls_back_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local(&dir);
    write_checkpoint(&s, 1);
    let m = write_checkpoint(&s, 2);
    let victim = s
        .checkpoint_dir(CheckpointId(2))
        .join(&m.tasks[0].state.file);
    fs::remove_file(&victim).expect("remove");
    match s.verify(CheckpointId(2)) {
        Err(Error::CheckpointCorrupt {
            checkpoint, path, ..
        }) => {
            assert_eq!(checkpoint, CheckpointId(2));
            assert_eq!(path, victim);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(
        s.latest_complete().expect("latest").map(|c| c.id()),
        Some(CheckpointId(1))
    );
}

#[test]
fn retention_keeps_exactly_k_complete_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local(&dir).with_retain(3);
    for id in 1..=10 {
        write_checkpoint(&s, id);
    }
    assert_eq!(
        s.completed_ids().expect("ids"),
        vec![CheckpointId(8), CheckpointId(9), CheckpointId(10)]
    );
    let dirs = fs::read_dir(s.dir()).expect("list").count();
    assert_eq!(dirs, 3, "older checkpoint directories are gone");
    let m = MemoryCheckpointStorage::new(JOB)
        .expect("memory")
        .with_retain(2);
    for id in 1..=5 {
        write_checkpoint(&m, id);
    }
    assert_eq!(
        m.completed_ids().expect("ids"),
        vec![CheckpointId(4), CheckpointId(5)]
    );
}

#[test]
fn an_aborted_checkpoint_leaves_no_files_and_a_complete_one_cannot_be_aborted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local(&dir);
    write_checkpoint(&s, 1);
    let task = TaskId::new("count", 0).expect("task");
    s.write_task_state(CheckpointId(2), &task, b"partial")
        .expect("write");
    assert!(s.checkpoint_dir(CheckpointId(2)).exists());
    assert_eq!(
        s.latest_complete().expect("latest").map(|c| c.id()),
        Some(CheckpointId(1)),
        "no manifest, no checkpoint"
    );
    s.abort(CheckpointId(2)).expect("abort");
    assert!(!s.checkpoint_dir(CheckpointId(2)).exists());
    assert!(s.abort(CheckpointId(1)).is_err());
    assert!(
        s.write_task_state(CheckpointId(1), &task, b"x").is_err(),
        "complete checkpoints are immutable"
    );
    // A stale incomplete checkpoint below a newly committed one is removed by the commit.
    s.write_task_state(CheckpointId(3), &task, b"stale")
        .expect("write");
    write_checkpoint(&s, 4);
    assert!(!s.checkpoint_dir(CheckpointId(3)).exists());
}

#[test]
fn a_manifest_naming_a_file_of_the_wrong_size_is_not_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local(&dir);
    let cid = CheckpointId(1);
    let task = TaskId::new("count", 0).expect("task");
    let mut handle = s.write_task_state(cid, &task, b"abc").expect("write");
    handle.size = 4;
    let mut m = Manifest::new(JOB, cid, 128);
    m.parallelism.insert("count".into(), 1);
    m.tasks.push(TaskStateEntry {
        task,
        state: handle,
        key_groups: None,
    });
    assert!(matches!(s.commit(&m), Err(Error::CheckpointCorrupt { .. })));
    assert_eq!(s.latest_complete().expect("latest"), None);
}

/// Writes the state files of checkpoint `id` for tasks 0, 1 and 2 of vertex "count" and
/// returns a valid manifest naming tasks 0 and 1 (parallelism 2, key groups in two halves).
fn manifest_with_spare_task(storage: &dyn CheckpointStorage, id: u64) -> Manifest {
    let cid = CheckpointId(id);
    let mut m = Manifest::new(JOB, cid, 128);
    for i in 0..3u32 {
        let task = TaskId::new("count", i).expect("task");
        let state = storage
            .write_task_state(cid, &task, &[i as u8; 10])
            .expect("write state");
        if i < 2 {
            m.tasks.push(TaskStateEntry {
                task,
                state,
                key_groups: Some(KeyGroupRange::for_task(i, 2, 128).expect("range")),
            });
        }
    }
    m.parallelism.insert("count".into(), 2);
    m.sources.push(SourceOffset {
        task: TaskId::new("source", 0).expect("task"),
        partition: PartitionId(0),
        offset: LogOffset(7),
    });
    m
}

/// The manifest `m` as the bytes of a stored `_manifest` file, bypassing the checks of
/// `commit`: the same envelope storage writes (magic, u64 length, CRC32C over length and
/// payload) around named MessagePack.
fn manifest_file_bytes(m: &Manifest) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(m).expect("encode manifest");
    let len = (payload.len() as u64).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
    let mut out = b"SNAPMANI".to_vec();
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Ways to break a valid manifest made by `manifest_with_spare_task`, each with its name.
fn broken_manifests(valid: &Manifest) -> Vec<(&'static str, Manifest)> {
    let range = |start: u16, end: u16| Some(KeyGroupRange { start, end });
    let mut out = Vec::new();
    let mut m = valid.clone();
    m.tasks.remove(1);
    out.push(("a task is missing", m));
    let mut m = valid.clone();
    m.parallelism.insert("count".into(), 3);
    out.push(("the parallelism names a task with no entry", m));
    let mut m = valid.clone();
    let mut extra = m.tasks[1].clone();
    extra.task.index = 2;
    extra.state.file = "task-count-2.state".into();
    m.tasks.push(extra);
    out.push(("a task beyond the parallelism", m));
    let mut m = valid.clone();
    m.parallelism.clear();
    out.push(("task entries of a vertex without parallelism", m));
    let mut m = valid.clone();
    m.parallelism.insert("idle".into(), 0);
    out.push(("a vertex of parallelism 0", m));
    let mut m = valid.clone();
    m.tasks[1].key_groups = None;
    out.push(("a keyed vertex with a task without a key-group range", m));
    let mut m = valid.clone();
    m.tasks[1].key_groups = range(32, 128);
    out.push(("overlapping key-group ranges", m));
    let mut m = valid.clone();
    m.tasks[1].key_groups = range(65, 128);
    out.push(("a key group no task owns", m));
    let mut m = valid.clone();
    m.tasks[1].key_groups = range(64, 127);
    out.push(("ranges that stop short of the max parallelism", m));
    let mut m = valid.clone();
    m.tasks[1].key_groups = range(64, 129);
    out.push(("a range beyond the max parallelism", m));
    let mut m = valid.clone();
    m.tasks[0].key_groups = range(0, 128);
    m.tasks[1].key_groups = range(0, 128);
    out.push(("two tasks owning every key group", m));
    let mut m = valid.clone();
    m.sources[0].task = TaskId {
        vertex: "../source".into(),
        index: 0,
    };
    out.push(("a source with an unsafe vertex name", m));
    out
}

#[test]
fn a_manifest_missing_a_task_or_key_group_range_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = local(&dir);
    let memory = MemoryCheckpointStorage::new(JOB).expect("memory");
    for storage in [&disk as &dyn CheckpointStorage, &memory] {
        let valid = manifest_with_spare_task(storage, 1);
        for (what, bad) in broken_manifests(&valid) {
            assert!(
                matches!(storage.commit(&bad), Err(Error::Config(_))),
                "{what}: committed"
            );
            assert!(
                storage.completed_ids().expect("ids").is_empty(),
                "{what}: a checkpoint became complete"
            );
        }
        // The valid manifest still commits and verifies.
        storage.commit(&valid).expect("the valid manifest");
        assert_eq!(
            storage.verify(CheckpointId(1)).expect("verify").manifest,
            valid
        );
        // A vertex whose entries carry no key-group range at all is not keyed: that is valid.
        let mut unkeyed = manifest_with_spare_task(storage, 2);
        for t in &mut unkeyed.tasks {
            t.key_groups = None;
        }
        storage.commit(&unkeyed).expect("an unkeyed vertex");
        assert_eq!(
            storage.verify(CheckpointId(2)).expect("verify").manifest,
            unkeyed
        );
    }

    // A manifest of a refused shape that reaches the disk anyway (written by an older version
    // or by hand) inside a valid envelope does not verify: the previous checkpoint is chosen.
    let next = manifest_with_spare_task(&disk, 3);
    let path = disk.checkpoint_dir(CheckpointId(3)).join("_manifest");
    fs::write(&path, manifest_file_bytes(&next)).expect("write a valid manifest by hand");
    assert_eq!(
        disk.verify(CheckpointId(3))
            .expect("the hand-written envelope is valid")
            .manifest,
        next
    );
    for (what, bad) in broken_manifests(&next) {
        fs::write(&path, manifest_file_bytes(&bad)).expect("write manifest");
        match disk.verify(CheckpointId(3)) {
            Err(Error::CheckpointCorrupt {
                checkpoint,
                path: failed,
                ..
            }) => {
                assert_eq!(checkpoint, CheckpointId(3), "{what}");
                assert_eq!(failed, path, "{what}");
            }
            other => panic!("{what}: expected corruption, got {other:?}"),
        }
        assert_eq!(
            disk.latest_complete().expect("latest").map(|c| c.id()),
            Some(CheckpointId(2)),
            "{what}"
        );
    }
}

#[test]
fn path_traversal_names_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        "../evil",
        "/etc",
        "a/b",
        "..",
        ".",
        "",
        "nul\0byte",
        "back\\slash",
    ] {
        assert!(
            matches!(
                LocalCheckpointStorage::new(dir.path(), bad),
                Err(Error::InvalidName { .. })
            ),
            "job {bad:?} accepted"
        );
        assert!(
            matches!(TaskId::new(bad, 0), Err(Error::InvalidName { .. })),
            "vertex {bad:?} accepted"
        );
    }
    let s = local(&dir);
    let sneaky = TaskId {
        vertex: "../../x".into(),
        index: 0,
    };
    assert!(matches!(
        s.write_task_state(CheckpointId(1), &sneaky, b"x"),
        Err(Error::InvalidName { .. })
    ));
    let mut m = Manifest::new(JOB, CheckpointId(1), 128);
    m.job = "../other".into();
    assert!(s.commit(&m).is_err());
    // Nothing was created outside the storage directory.
    let names: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(JOB)]);
}

#[test]
fn memory_storage_detects_tampering_and_falls_back() {
    let s = MemoryCheckpointStorage::new(JOB).expect("memory");
    write_checkpoint(&s, 1);
    let m = write_checkpoint(&s, 2);
    assert!(s.tamper(CheckpointId(2), &m.tasks[1].state.file, |b| b[30] ^= 0xff));
    assert_eq!(
        s.latest_complete().expect("latest").map(|c| c.id()),
        Some(CheckpointId(1))
    );
    assert!(s.tamper(CheckpointId(1), "_manifest", |b| b.truncate(10)));
    // Every checkpoint is corrupt: an error naming each, never a silent start from scratch.
    match s.latest_complete() {
        Err(Error::NoValidCheckpoint { job, rejected }) => {
            assert_eq!(job, JOB);
            let ids: Vec<CheckpointId> = rejected.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, vec![CheckpointId(2), CheckpointId(1)]);
        }
        other => panic!("expected NoValidCheckpoint, got {other:?}"),
    }
}
