//! Failed writes and fsyncs on a simulated disk (issue 11, part 3): each component that sees
//! one reports a Restart-class error and never continues on bytes the kernel may have dropped;
//! a shared `FileLog` recovers in place; every component comes back from its durable bytes.

use std::path::Path;
use std::sync::Arc;

use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, LocalCheckpointStorage, Manifest, TaskId, TaskStateEntry,
};
use snapflow::log::{FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog, SyncPolicy};
use snapflow::runtime::TaskInfo;
use snapflow::sink::TwoPhaseCommitSink;
use snapflow::storage::sim::{SimDisk, SimFault};
use snapflow::storage::FileSystem;
use snapflow::{Error, ErrorClass, FileSink};

fn log_options() -> FileLogOptions {
    FileLogOptions {
        partitions: 1,
        sync: SyncPolicy::EveryAppend,
        ..FileLogOptions::default()
    }
}

fn payloads(log: &FileLog) -> Vec<Vec<u8>> {
    let batch = log
        .read(PartitionId(0), LogOffset(0), 10_000)
        .expect("read");
    batch.iter().map(|(_, p)| p.to_vec()).collect()
}

#[test]
fn a_log_partition_whose_fsync_failed_reports_it_then_recovers_in_place_on_the_next_append() {
    let disk = SimDisk::new("/sim", 1);
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let log = FileLog::open_on(Arc::clone(&fs), "/sim/log", log_options()).expect("open");
    log.append(PartitionId(0), b"one").expect("append one");
    // The next append writes its frame, then fsyncs it: that fsync fails.
    disk.fail_at(disk.ops() + 2, SimFault::Eio);
    let e = log
        .append(PartitionId(0), b"two")
        .expect_err("the failed fsync is reported");
    assert_eq!(e.class(), ErrorClass::Restart, "{e}");
    // Nothing is built on the dropped frame: the log recovers and "two" is gone.
    log.append(PartitionId(0), b"three")
        .expect("recovered in place");
    assert_eq!(payloads(&log), vec![b"one".to_vec(), b"three".to_vec()]);
    drop(log);
    disk.cut_power();
    disk.reboot();
    let log = FileLog::open_on(fs, "/sim/log", log_options()).expect("reopen");
    assert_eq!(payloads(&log), vec![b"one".to_vec(), b"three".to_vec()]);
}

#[test]
fn a_log_partition_whose_write_failed_for_lack_of_space_recovers_once_space_returns() {
    let disk = SimDisk::new("/sim", 2);
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let log = FileLog::open_on(fs, "/sim/log", log_options()).expect("open");
    log.append(PartitionId(0), b"a").expect("append");
    disk.fail_at(disk.ops() + 1, SimFault::NoSpace);
    let e = log.append(PartitionId(0), b"b").expect_err("ENOSPC");
    assert!(
        e.to_string().contains("No space") || e.to_string().contains("space"),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Restart);
    log.append(PartitionId(0), b"c").expect("space is back");
    assert_eq!(payloads(&log), vec![b"a".to_vec(), b"c".to_vec()]);
}

fn task() -> TaskId {
    TaskId::new("sum", 0).expect("task id")
}

#[test]
fn checkpoint_storage_refuses_writes_after_a_failed_fsync_until_a_restore_verifies() {
    let disk = SimDisk::new("/sim", 3);
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let storage =
        LocalCheckpointStorage::with_file_system(fs, "/sim/checkpoints", "job").expect("storage");
    let handle = storage
        .write_task_state(CheckpointId(1), &task(), b"state one")
        .expect("write");
    let mut manifest = Manifest::new("job", CheckpointId(1), 128);
    manifest.parallelism.insert("sum".into(), 1);
    manifest.tasks.push(TaskStateEntry {
        task: task(),
        state: handle,
        key_groups: None,
    });
    storage.commit(&manifest).expect("commit 1");
    // The temp file of the next state write is created, written, then fsynced: that fails.
    disk.fail_at(disk.ops() + 4, SimFault::Eio);
    let e = storage
        .write_task_state(CheckpointId(2), &task(), b"state two")
        .expect_err("the failed fsync");
    assert_eq!(e.class(), ErrorClass::Restart);
    let refused = storage
        .write_task_state(CheckpointId(3), &task(), b"state three")
        .expect_err("refused");
    assert!(matches!(refused, Error::Poisoned { .. }), "{refused}");
    assert_eq!(refused.class(), ErrorClass::Restart);
    // A restore reads the disk again, and writes may go on.
    let latest = storage
        .latest_complete()
        .expect("read")
        .expect("checkpoint 1");
    assert_eq!(latest.manifest.checkpoint, CheckpointId(1));
    storage
        .write_task_state(CheckpointId(3), &task(), b"state three")
        .expect("writes resume after the restore");
}

fn info() -> TaskInfo {
    TaskInfo {
        task: task(),
        parallelism: 1,
        max_parallelism: 128,
        restored_from: None,
        attempt: 0,
    }
}

#[test]
fn a_file_sink_refuses_every_write_after_a_failed_fsync_and_a_fresh_one_recovers() {
    let disk = SimDisk::new("/sim", 4);
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let out = Path::new("/sim/out");
    let proto = FileSink::new(out, |r: &u64, l: &mut String| l.push_str(&r.to_string()))
        .with_file_system(Arc::clone(&fs));
    let mut sink = proto.clone();
    sink.open(&info()).expect("open");
    sink.begin(CheckpointId(1)).expect("begin");
    sink.write(1).expect("write");
    let txn = sink.pre_commit(CheckpointId(1)).expect("pre-commit 1");
    sink.commit(&txn).expect("commit 1");
    sink.begin(CheckpointId(2)).expect("begin");
    sink.write(2).expect("write");
    // Pre-commit writes the buffered line, then fsyncs the file: that fails.
    disk.fail_at(disk.ops() + 3, SimFault::Eio);
    let e = sink
        .pre_commit(CheckpointId(2))
        .expect_err("the failed fsync");
    assert_eq!(e.class(), ErrorClass::Restart);
    let refused = sink.write(3).expect_err("refused");
    assert!(matches!(refused, Error::Poisoned { .. }), "{refused}");
    // The restarted task's sink recovers from the checkpoint (epoch 1) and the disk.
    let mut fresh = proto.clone();
    fresh.open(&info()).expect("open");
    fresh.recover(&[txn]).expect("recover");
    assert_eq!(
        FileSink::<u64>::read_committed_on(fs.as_ref(), out).expect("read"),
        vec!["1".to_string()]
    );
}

#[test]
fn a_checkpoint_storage_refused_before_any_checkpoint_completed_accepts_writes_after_a_restore() {
    let disk = SimDisk::new("/sim", 4);
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let storage =
        LocalCheckpointStorage::with_file_system(fs, "/sim/checkpoints", "job").expect("storage");
    disk.fail_at(disk.ops() + 4, SimFault::Eio);
    storage
        .write_task_state(CheckpointId(1), &task(), b"state one")
        .expect_err("the failed fsync");
    let refused = storage
        .write_task_state(CheckpointId(2), &task(), b"state two")
        .expect_err("refused");
    assert!(matches!(refused, Error::Poisoned { .. }), "{refused}");
    // The restore finds no checkpoint at all, and starts from nothing: writes go on.
    assert!(storage.latest_complete().expect("read").is_none());
    storage
        .write_task_state(CheckpointId(2), &task(), b"state two")
        .expect("writes resume after a restore that found nothing");
}

#[test]
fn a_failed_removal_of_an_aborted_checkpoints_files_refuses_no_later_write() {
    let disk = SimDisk::new("/sim", 5);
    let fs: Arc<dyn FileSystem> = Arc::new(disk.clone());
    let storage =
        LocalCheckpointStorage::with_file_system(fs, "/sim/checkpoints", "job").expect("storage");
    storage
        .write_task_state(CheckpointId(1), &task(), b"state one")
        .expect("write");
    // The abort removes the manifest (there is none), then the directory: every attempt at
    // the directory fails.
    let first = disk.ops() + 1;
    for op in first + 1..first + 4 {
        disk.fail_at(op, SimFault::Eio);
    }
    storage
        .abort(CheckpointId(1))
        .expect("the files are left behind, with a warning");
    let kinds: Vec<_> = disk
        .trace()
        .into_iter()
        .filter(|o| o.number >= first)
        .collect();
    assert!(
        kinds.iter().filter(|o| o.kind == "remove").count() >= 3,
        "the directory removal was not retried: {kinds:?}"
    );
    storage
        .write_task_state(CheckpointId(2), &task(), b"state two")
        .expect("a failed removal refuses nothing");
    assert!(storage.completed_ids().expect("ids").is_empty());
}
