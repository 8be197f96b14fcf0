//! Entry points for fuzzing the decoders of stored bytes: the `cargo fuzz` targets in `fuzz/`
//! and the proptest smoke run in `tests/decoders_smoke.rs` call these. Hidden from the
//! documentation and not part of the supported API: they may change with any release.
//!
//! Every byte snapflow reads back (log segments and indexes, checksummed envelopes, manifests,
//! task, keyed and operator snapshots, sink transaction records) is untrusted. Each function
//! here feeds its input to one decoder and checks what every decoder must give: an error or a
//! value, never a panic; sizes bounded before anything is allocated for them (the fuzzer's
//! allocation limit enforces that); and a value decoded from the input decodes to the same
//! value after being encoded again. A broken property panics, with what broke.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::checkpoint::{decode_manifest, encode_manifest, Manifest, MANIFEST_MAGIC, STATE_MAGIC};
use crate::codec;
use crate::log::frame::{check_frame, encode_frame, FrameCheck};
use crate::log::{FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog};
use crate::sink::FileTxn;
use crate::state::{KeyGroupRange, KeyedStateBackend, OperatorStateBackend, TaskSnapshot};
use crate::storage;

/// The largest payload the envelope checks accept here.
const MAX_PAYLOAD: u64 = 1 << 20;

/// The checksummed envelope of state files and manifests.
pub fn envelope(bytes: &[u8]) {
    for magic in [STATE_MAGIC, MANIFEST_MAGIC] {
        if let Ok(payload) = storage::decode_envelope(magic, bytes, MAX_PAYLOAD) {
            let again = storage::encode_envelope(magic, payload);
            let decoded = storage::decode_envelope(magic, &again, MAX_PAYLOAD);
            assert_eq!(decoded, Ok(payload), "an envelope does not round-trip");
        }
    }
}

/// Log frames, one after the other from the start of `bytes`.
pub fn log_frames(bytes: &[u8]) {
    let mut at = 0;
    while at < bytes.len() {
        match check_frame(&bytes[at..], 1 << 16) {
            FrameCheck::Valid { offset, len } => {
                let payload = &bytes[at + 16..at + 16 + len];
                let mut again = Vec::new();
                encode_frame(&mut again, offset, payload);
                assert_eq!(
                    check_frame(&again, 1 << 16),
                    FrameCheck::Valid { offset, len },
                    "a frame does not round-trip"
                );
                assert_eq!(
                    again[..],
                    bytes[at..at + 16 + len],
                    "a frame is not canonical"
                );
                at += 16 + len;
            }
            FrameCheck::Incomplete { .. }
            | FrameCheck::TooLarge { .. }
            | FrameCheck::BadChecksum => return,
        }
    }
}

/// A checkpoint manifest file (envelope and MessagePack).
pub fn manifest(bytes: &[u8]) {
    // The id and job a reader expects come from the file's own claim, so that the checks after
    // decoding (consistency, names) are reached.
    let Ok(payload) = storage::decode_envelope(MANIFEST_MAGIC, bytes, 64 << 20) else {
        return;
    };
    let Ok(claimed) = codec::decode::<Manifest>(payload, "manifest") else {
        return;
    };
    let Ok(m) = decode_manifest(bytes, claimed.checkpoint, &claimed.job) else {
        return;
    };
    let again = encode_manifest(&m).expect("a decoded manifest encodes");
    let decoded = decode_manifest(&again, m.checkpoint, &m.job);
    assert_eq!(decoded.as_ref(), Ok(&m), "a manifest does not round-trip");
}

/// A task snapshot (MessagePack), its keyed state restored into a backend that owns every key
/// group, and its operator state into an operator backend.
pub fn task_snapshot(bytes: &[u8]) {
    let Ok(snapshot) = TaskSnapshot::from_bytes(bytes) else {
        return;
    };
    let again = snapshot.to_bytes().expect("a decoded snapshot encodes");
    assert_eq!(
        TaskSnapshot::from_bytes(&again).as_ref().ok(),
        Some(&snapshot),
        "a task snapshot does not round-trip"
    );
    if let Some(keyed) = &snapshot.keyed {
        keyed_restore(keyed);
    }
    operator_restore(&snapshot.operator);
}

/// Restores `keyed` into a backend owning all of its key groups; a restore that succeeds must
/// snapshot to state that restores to the same snapshot again.
fn keyed_restore(keyed: &crate::state::KeyedSnapshot) {
    let Ok(range) = KeyGroupRange::all(keyed.max_parallelism) else {
        return;
    };
    let Ok(mut backend) = KeyedStateBackend::<u64>::new(range, keyed.max_parallelism) else {
        return;
    };
    if backend.restore([keyed]).is_err() {
        return;
    }
    let first = backend.snapshot().expect("restored state snapshots");
    let mut second = KeyedStateBackend::<u64>::new(range, keyed.max_parallelism)
        .expect("the same backend again");
    second
        .restore([&first])
        .expect("a snapshot of restored state restores");
    assert_eq!(
        second.snapshot().expect("snapshot"),
        first,
        "keyed state does not round-trip through a restore"
    );
}

/// Restores operator state; its snapshot must be the state restored.
fn operator_restore(op: &crate::state::OperatorSnapshot) {
    let backend = OperatorStateBackend::restored(op.clone());
    if let Ok(again) = backend.snapshot() {
        let back = OperatorStateBackend::restored(again.clone());
        assert_eq!(
            back.snapshot().ok(),
            Some(again),
            "operator state does not round-trip"
        );
    }
}

/// An operator snapshot on its own (MessagePack).
pub fn operator_snapshot(bytes: &[u8]) {
    let Ok(op) = codec::decode::<crate::state::OperatorSnapshot>(bytes, "operator snapshot") else {
        return;
    };
    let again = codec::encode(&op, "operator snapshot").expect("encodes");
    assert_eq!(
        codec::decode::<crate::state::OperatorSnapshot>(&again, "operator snapshot").ok(),
        Some(op.clone()),
        "an operator snapshot does not round-trip"
    );
    operator_restore(&op);
}

/// The transaction records a file sink keeps in its state: `(task, epoch, transaction)`.
pub fn sink_transactions(bytes: &[u8]) {
    type Txns = Vec<(u32, u64, FileTxn)>;
    let Ok(txns) = codec::decode::<Txns>(bytes, "sink transactions") else {
        return;
    };
    for (_, _, txn) in &txns {
        let _ = crate::sink::check_file_name(&txn.file);
    }
    let again = codec::encode(&txns, "sink transactions").expect("encodes");
    assert_eq!(
        codec::decode::<Txns>(&again, "sink transactions").ok(),
        Some(txns),
        "sink transactions do not round-trip"
    );
}

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A scratch directory of this process, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("snapflow-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("p-00000")).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every record of partition 0, or the first error.
fn read_all(log: &FileLog) -> crate::error::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let p = PartitionId(0);
    let mut at = log.start_offset(p)?;
    loop {
        let batch = log.read(p, at, 64)?;
        if batch.is_empty() {
            return Ok(out);
        }
        for (_, bytes) in batch.iter() {
            out.push(bytes.to_vec());
        }
        at = LogOffset(batch.next_offset().0);
    }
}

/// A log partition whose only segment holds `segment` and whose index holds `index`: open
/// (with its recovery of the tail) and a read of every record give errors or data, never a
/// panic; and recovery is idempotent: reopening the recovered log gives the same records.
pub fn log_segment(segment: &[u8], index: &[u8]) {
    let scratch = Scratch::new();
    let part = scratch.0.join("p-00000");
    let name = "00000000000000000000";
    std::fs::write(part.join(format!("{name}.log")), segment).expect("write segment");
    std::fs::write(part.join(format!("{name}.idx")), index).expect("write index");
    let opts = FileLogOptions {
        partitions: 1,
        max_record_bytes: 1 << 16,
        index_interval_bytes: 64,
        ..FileLogOptions::default()
    };
    let first = match FileLog::open(&scratch.0, opts.clone()) {
        Ok(log) => read_all(&log),
        Err(_) => return,
    };
    let Ok(first) = first else {
        return;
    };
    let log = FileLog::open(&scratch.0, opts).expect("a recovered log opens again");
    assert_eq!(
        read_all(&log).expect("a recovered log reads again"),
        first,
        "recovery is not idempotent"
    );
}
