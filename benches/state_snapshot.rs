//! Keyed state snapshots of 1 million (u64 -> u64) entries: capture alone (the time the task
//! stops processing), capture + encode to task snapshot bytes (streamed, as checkpoints do, and
//! through the structured `KeyedSnapshot`), and decode + restore. Prints the snapshot size.
//! Then the restore of 1 million struct values three ways: stored in the registered schema (the
//! direct decode), after a field was added (each value rewritten to a map by field names), and
//! through a registered migration to version 2: what schema evolution costs a restore.
//! Run: `cargo bench --bench state_snapshot`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};
use snapflow::state::{
    KeyGroupRange, KeyedSnapshot, KeyedStateBackend, StateValue, StateVersion, TaskSnapshot,
    DEFAULT_MAX_PARALLELISM,
};

const G: u32 = DEFAULT_MAX_PARALLELISM;
const ENTRIES: u64 = 1_000_000;

fn filled() -> KeyedStateBackend<u64> {
    let mut b =
        KeyedStateBackend::<u64>::new(KeyGroupRange::all(G).expect("range"), G).expect("backend");
    let v = b.value_state::<u64>("sum").expect("state");
    for k in 0..ENTRIES {
        b.set_current_key(k).expect("key");
        v.set(&mut b, k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .expect("set");
    }
    b
}

fn snapshot(c: &mut Criterion) {
    let mut b = filled();
    let snap = b.snapshot().expect("snapshot");
    let bytes = TaskSnapshot {
        keyed: Some(snap.clone()),
        operator: Default::default(),
    }
    .to_bytes()
    .expect("encode");
    println!(
        "keyed snapshot of {ENTRIES} u64->u64 entries: {} bytes in {} key group blobs, {} bytes as a task snapshot",
        snap.size_bytes(),
        snap.groups.len(),
        bytes.len()
    );
    let mut g = c.benchmark_group("keyed_state_1M");
    g.sample_size(10);
    g.bench_function("capture", |bench| bench.iter(|| b.capture()));
    g.bench_function("capture_and_encode_streamed", |bench| {
        bench.iter(|| {
            b.capture()
                .encode_task_snapshot(&Default::default())
                .expect("bytes")
        })
    });
    g.bench_function("capture_and_encode", |bench| {
        bench.iter(|| {
            let s = b.capture().encode().expect("encode");
            TaskSnapshot {
                keyed: Some(s),
                operator: Default::default(),
            }
            .to_bytes()
            .expect("bytes")
        })
    });
    g.bench_function("decode_and_restore", |bench| {
        bench.iter(|| {
            let s = TaskSnapshot::from_bytes(&bytes)
                .expect("decode")
                .keyed
                .expect("keyed");
            let mut r = KeyedStateBackend::<u64>::new(KeyGroupRange::all(G).expect("range"), G)
                .expect("backend");
            r.restore([&s]).expect("restore");
            r.value_state::<u64>("sum")
                .expect("register decodes the state");
            assert_eq!(r.entries() as u64, ENTRIES);
            r
        })
    });
    g.finish();
}

#[derive(Clone, Serialize, Deserialize)]
struct Total {
    count: u64,
    sum: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct TotalAdded {
    count: u64,
    sum: u64,
    #[serde(default)]
    max: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct TotalV2 {
    count: u32,
    mean: f64,
}

fn backend() -> KeyedStateBackend<u64> {
    KeyedStateBackend::<u64>::new(KeyGroupRange::all(G).expect("range"), G).expect("backend")
}

/// Restores `snap` into state "total" of type `T`, declared at `version`.
fn restore_as<T: StateValue>(snap: &KeyedSnapshot, version: Option<StateVersion>) {
    let mut r = backend();
    if let Some(v) = version {
        r.declare_version("total", v).expect("declare");
    }
    r.restore([snap]).expect("restore");
    r.value_state::<T>("total").expect("register decodes");
    assert_eq!(r.entries() as u64, ENTRIES);
}

fn evolution(c: &mut Criterion) {
    let mut b = backend();
    let v = b.value_state::<Total>("total").expect("state");
    for k in 0..ENTRIES {
        b.set_current_key(k).expect("key");
        v.set(
            &mut b,
            Total {
                count: k,
                sum: k * 3,
            },
        )
        .expect("set");
    }
    let snap = b.snapshot().expect("snapshot");
    let mut g = c.benchmark_group("struct_state_1M_restore");
    g.sample_size(10);
    g.bench_function("same_schema", |bench| {
        bench.iter(|| restore_as::<Total>(&snap, None))
    });
    g.bench_function("field_added", |bench| {
        bench.iter(|| restore_as::<TotalAdded>(&snap, None))
    });
    g.bench_function("migrated_to_v2", |bench| {
        bench.iter(|| {
            let v2 = StateVersion::new(2).migrate(1, |t: Total| TotalV2 {
                count: t.count as u32,
                mean: t.sum as f64 / t.count.max(1) as f64,
            });
            restore_as::<TotalV2>(&snap, Some(v2))
        })
    });
    g.finish();
}

criterion_group!(benches, snapshot, evolution);
criterion_main!(benches);
