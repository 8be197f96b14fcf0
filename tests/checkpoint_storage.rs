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

#[test]
fn every_truncation_and_sampled_byte_flips_of_a_state_file_or_manifest_fall_back_to_the_previous_checkpoint(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = local(&dir);
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
    m.tasks.push(TaskStateEntry {
        task,
        state: handle,
        key_groups: None,
    });
    assert!(s.commit(&m).is_err());
    assert_eq!(s.latest_complete().expect("latest"), None);
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
    assert_eq!(s.latest_complete().expect("latest"), None);
}
