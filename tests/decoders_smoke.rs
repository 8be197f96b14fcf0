//! A short, seeded smoke run of the decoder properties the `cargo fuzz` targets in `fuzz/`
//! check (`snapflow::fuzzing`): no panic on any input, and decode(encode(decode(b))) =
//! decode(b). Inputs are real files made by a job run here (a log, a checkpoint, sink
//! transactions), mutated by proptest, and random bytes. CI runs this, not the fuzzer.
//!
//! With `SNAPFLOW_FUZZ_CORPUS=DIR` set, the real files are also written to
//! `DIR/<target>/` as the fuzzer's seed corpus.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use snapflow::checkpoint::{CheckpointStorage, CheckpointTiming};
use snapflow::fuzzing;
use snapflow::log::codec;
use snapflow::prelude::*;
use snapflow::sink::FileTxn;

/// Real stored bytes, per fuzz target.
struct Seeds {
    envelope: Vec<Vec<u8>>,
    manifest: Vec<Vec<u8>>,
    task_snapshot: Vec<Vec<u8>>,
    operator_snapshot: Vec<Vec<u8>>,
    sink_transactions: Vec<Vec<u8>>,
    log_frames: Vec<Vec<u8>>,
    log_segment: Vec<Vec<u8>>,
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with(&p, ext));
        } else if p.to_string_lossy().ends_with(ext) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Runs a small keyed job (a `FileLog` source, keyed state, a file sink) and collects its files.
fn make_seeds() -> Seeds {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let log: Arc<dyn ReplayableLog> = Arc::new(
        FileLog::open(
            &log_dir,
            FileLogOptions {
                segment_bytes: 4096,
                index_interval_bytes: 256,
                ..FileLogOptions::with_partitions(2)
            },
        )
        .expect("log"),
    );
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    for i in 0..600u64 {
        typed
            .append_batch(PartitionId((i % 2) as u32), &[(i % 7, 1)])
            .expect("append");
    }
    log.sync().expect("sync");
    let storage = LocalCheckpointStorage::new(dir.path().join("checkpoints"), "seeds")
        .expect("storage")
        .with_retain(100);
    let root = storage.dir().to_path_buf();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(storage);
    let out = dir.path().join("out");
    let config = JobConfig {
        parallelism: 2,
        batch_size: 32,
        threads: Threads::Current,
        checkpoints: CheckpointTiming::every(Duration::from_millis(2)),
        ..JobConfig::default()
    };
    let job = common::keyed_job("seeds", config, storage, log, &out, common::Stage::new(0));
    actix::System::new()
        .block_on(common::run_to_end(job))
        .expect("the seed job");

    let read = |p: &PathBuf| std::fs::read(p).expect("read");
    let manifest: Vec<Vec<u8>> = files_with(&root, "_manifest").iter().map(read).collect();
    let states: Vec<Vec<u8>> = files_with(&root, ".state").iter().map(read).collect();
    let payloads: Vec<Vec<u8>> = states.iter().map(|s| s[20..].to_vec()).collect();
    let mut operator_snapshot = Vec::new();
    for p in &payloads {
        let snap = TaskSnapshot::from_bytes(p).expect("a real snapshot decodes");
        operator_snapshot.push(codec::encode(&snap.operator, "operator").expect("encode"));
    }
    let txns: Vec<(u32, u64, FileTxn)> = FileSink::<(u64, u64)>::committed_files(&out)
        .expect("files")
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f.file_name().expect("name").to_string_lossy().to_string();
            (
                i as u32 % 2,
                i as u64 + 1,
                FileTxn {
                    epoch: i as u64 + 1,
                    file: name,
                    records: 3,
                },
            )
        })
        .collect();
    let segments = files_with(&log_dir, ".log");
    let log_frames: Vec<Vec<u8>> = segments.iter().map(|s| read(s)[16..].to_vec()).collect();
    let log_segment: Vec<Vec<u8>> = segments
        .iter()
        .map(|s| {
            let seg = read(s);
            let idx = std::fs::read(s.with_extension("idx")).unwrap_or_default();
            let mut input = (seg.len().min(u16::MAX as usize) as u16)
                .to_le_bytes()
                .to_vec();
            input.extend_from_slice(&seg);
            input.extend_from_slice(&idx);
            input
        })
        .collect();
    let mut envelope = manifest.clone();
    envelope.extend(states.iter().cloned());
    Seeds {
        envelope,
        manifest,
        task_snapshot: payloads,
        operator_snapshot,
        sink_transactions: vec![codec::encode(&txns, "txns").expect("encode")],
        log_frames,
        log_segment,
    }
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let s = make_seeds();
        if let Some(dir) = std::env::var_os("SNAPFLOW_FUZZ_CORPUS") {
            for (target, files) in [
                ("envelope", &s.envelope),
                ("manifest", &s.manifest),
                ("task_snapshot", &s.task_snapshot),
                ("operator_snapshot", &s.operator_snapshot),
                ("sink_transactions", &s.sink_transactions),
                ("log_frames", &s.log_frames),
                ("log_segment", &s.log_segment),
            ] {
                let d = Path::new(&dir).join(target);
                std::fs::create_dir_all(&d).expect("corpus dir");
                for (i, f) in files.iter().enumerate() {
                    std::fs::write(d.join(format!("seed-{i}")), f).expect("write seed");
                }
            }
        }
        s
    })
}

/// A seed with some bytes flipped, truncated or extended: (which seed, edits).
fn mutated(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "no seed");
    (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(move |(i, flips, cut, truncate)| {
            let mut b = seeds[i].clone();
            for (at, x) in flips {
                if !b.is_empty() {
                    let at = at.index(b.len());
                    b[at] ^= x;
                }
            }
            if truncate && !b.is_empty() {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        })
}

/// Real seeds unchanged, mutated, or random bytes.
fn inputs(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated(seeds),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

#[test]
fn real_stored_bytes_decode_and_round_trip() {
    let s = seeds();
    for b in &s.envelope {
        fuzzing::envelope(b);
    }
    for b in &s.manifest {
        fuzzing::manifest(b);
    }
    for b in &s.task_snapshot {
        fuzzing::task_snapshot(b);
    }
    for b in &s.operator_snapshot {
        fuzzing::operator_snapshot(b);
    }
    for b in &s.sink_transactions {
        fuzzing::sink_transactions(b);
    }
    for b in &s.log_frames {
        fuzzing::log_frames(b);
    }
    assert!(
        !s.manifest.is_empty() && s.task_snapshot.len() >= 4,
        "too few seeds"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn envelopes_never_panic_and_round_trip(b in inputs(&seeds().envelope)) {
        fuzzing::envelope(&b);
    }

    #[test]
    fn manifests_never_panic_and_round_trip(b in inputs(&seeds().manifest)) {
        fuzzing::manifest(&b);
    }

    #[test]
    fn task_snapshots_never_panic_and_round_trip_through_a_restore(
        b in inputs(&seeds().task_snapshot)
    ) {
        fuzzing::task_snapshot(&b);
    }

    #[test]
    fn operator_snapshots_never_panic_and_round_trip(b in inputs(&seeds().operator_snapshot)) {
        fuzzing::operator_snapshot(&b);
    }

    #[test]
    fn sink_transactions_never_panic_and_round_trip(b in inputs(&seeds().sink_transactions)) {
        fuzzing::sink_transactions(&b);
    }

    #[test]
    fn log_frames_never_panic_and_round_trip(b in inputs(&seeds().log_frames)) {
        fuzzing::log_frames(&b);
    }
}

proptest! {
    // Each case writes two files and opens a log twice: fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_segments_recover_without_panic_and_idempotently(b in inputs(&seeds().log_segment)) {
        if b.len() >= 2 {
            let split = usize::from(u16::from_le_bytes([b[0], b[1]]));
            let rest = &b[2..];
            let (segment, index) = rest.split_at(split.min(rest.len()));
            fuzzing::log_segment(segment, index);
        }
    }
}
