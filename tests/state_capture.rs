//! Keyed state captures: a capture encodes the state as it was when taken, whatever the task
//! writes afterwards; the task encodes a captured group itself before its first write to it
//! (once per group, never for a capture that is gone); a state that cannot be encoded fails the
//! capture, not the task's write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use snapflow::state::{
    key_group_for, KeyGroupRange, KeyedSnapshot, KeyedStateBackend, KeyedStateCapture,
    DEFAULT_MAX_PARALLELISM,
};
use snapflow::Error;

const G: u32 = DEFAULT_MAX_PARALLELISM;

fn backend() -> KeyedStateBackend<u64> {
    KeyedStateBackend::new(KeyGroupRange::all(G).expect("range"), G).expect("backend")
}

/// A small deterministic generator (splitmix64), so a failing case can be replayed from its
/// seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The contents of a snapshot's "count" and "seen" states, read back by restoring it.
fn contents(snap: &KeyedSnapshot) -> (BTreeMap<u64, u64>, BTreeMap<u64, Vec<u64>>) {
    let mut b = backend();
    b.restore([snap]).expect("restore");
    let v = b.value_state::<u64>("count").expect("value");
    let l = b.list_state::<u64>("seen").expect("list");
    let values = v
        .entries(&b)
        .expect("entries")
        .map(|(k, x)| (*k, *x))
        .collect();
    let lists = l
        .entries(&b)
        .expect("entries")
        .map(|(k, x)| (*k, x.to_vec()))
        .collect();
    (values, lists)
}

/// Applies `ops` random writes (set, clear, append) over `keys` keys of both states.
fn write_randomly(b: &mut KeyedStateBackend<u64>, rng: &mut Rng, keys: u64, ops: usize) {
    let v = b.value_state::<u64>("count").expect("value");
    let l = b.list_state::<u64>("seen").expect("list");
    for _ in 0..ops {
        let r = rng.next();
        b.set_current_key(r % keys).expect("key");
        match (r >> 32) % 4 {
            0 => {
                v.clear(b).expect("clear");
            }
            1 => l.add(b, r >> 40).expect("add"),
            _ => v.set(b, r >> 40).expect("set"),
        }
    }
}

#[test]
fn a_capture_encodes_the_state_as_of_capture_whatever_the_task_writes_after() {
    for seed in 0..20u64 {
        let mut rng = Rng(seed);
        let mut b = backend();
        write_randomly(&mut b, &mut rng, 2_000, 3_000);
        // The reference: the state encoded on the spot, before any later write.
        let expected = contents(&b.snapshot().expect("snapshot"));
        let capture = b.capture();
        // Writes between capture and encoding: some groups settled by the task, some not.
        write_randomly(&mut b, &mut rng, 2_000, (seed as usize % 5) * 400);
        let half = capture.encode().expect("encode");
        write_randomly(&mut b, &mut rng, 2_000, 1_000);
        let again = capture.encode().expect("encode again");
        assert_eq!(contents(&half), expected, "seed {seed}");
        assert_eq!(again, half, "seed {seed}: a second encoding differs");
    }
}

#[test]
fn the_task_encodes_each_captured_group_once_before_its_first_write() {
    let mut b = backend();
    let v = b.value_state::<u64>("count").expect("value");
    // Keys 0..200 fill some groups; find two keys of distinct non-empty groups and one key of
    // a group that is empty.
    for k in 0..200u64 {
        b.set_current_key(k).expect("key");
        v.set(&mut b, k).expect("set");
    }
    let filled: Vec<u16> = (0..200u64).map(|k| key_group_for(&k, G).0).collect();
    let a = 0u64;
    let c = (1..200u64)
        .find(|k| key_group_for(k, G) != key_group_for(&a, G))
        .expect("a key of another group");
    let empty = (200..100_000u64)
        .find(|k| !filled.contains(&key_group_for(k, G).0))
        .expect("a key of an empty group");

    let capture = b.capture();
    assert_eq!(
        capture.deferred_encoding().groups,
        0,
        "capture encodes nothing"
    );
    for (key, groups) in [(a, 1), (a, 1), (c, 2), (c, 2), (empty, 2)] {
        b.set_current_key(key).expect("key");
        v.set(&mut b, 1_000 + key).expect("set");
        assert_eq!(
            capture.deferred_encoding().groups,
            groups,
            "after writing key {key}"
        );
    }
    let d = capture.deferred_encoding();
    assert!(d.longest <= d.total && d.total > std::time::Duration::ZERO);
    let snap = capture.encode().expect("encode");
    assert_eq!(
        capture.deferred_encoding().groups,
        2,
        "encode redoes nothing"
    );
    let (values, _) = contents(&snap);
    assert_eq!(values.len(), 200);
    assert!(
        values.iter().all(|(k, x)| k == x),
        "the capture saw a later write"
    );
}

/// A value that counts how often it is encoded.
#[derive(Clone, Deserialize)]
struct Counted(u64);

static ENCODED: AtomicUsize = AtomicUsize::new(0);

impl Serialize for Counted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ENCODED.fetch_add(1, Ordering::SeqCst);
        s.serialize_u64(self.0)
    }
}

#[test]
fn a_capture_dropped_or_replaced_costs_the_task_no_encoding() {
    let mut b = backend();
    let v = b.value_state::<Counted>("counted").expect("value");
    for k in 0..50u64 {
        b.set_current_key(k).expect("key");
        v.set(&mut b, Counted(k)).expect("set");
    }
    let before = ENCODED.load(Ordering::SeqCst);
    drop(b.capture());
    for k in 0..50u64 {
        b.set_current_key(k).expect("key");
        v.set(&mut b, Counted(k + 1)).expect("set");
    }
    assert_eq!(
        ENCODED.load(Ordering::SeqCst),
        before,
        "a dropped capture was encoded"
    );

    // An older capture still held is not encoded by the task: only the newest is. The write
    // copies the group instead, and both captures keep their own state.
    let older: KeyedStateCapture<u64> = b.capture();
    let newer = b.capture();
    b.set_current_key(7).expect("key");
    v.set(&mut b, Counted(700)).expect("set");
    assert_eq!(older.deferred_encoding().groups, 0);
    assert_eq!(newer.deferred_encoding().groups, 1);
    for capture in [older, newer] {
        let mut r = backend();
        r.restore([&capture.encode().expect("encode")])
            .expect("restore");
        let v = r.value_state::<Counted>("counted").expect("value");
        r.set_current_key(7).expect("key");
        assert_eq!(v.get(&r).expect("get").map(|c| c.0), Some(8));
    }
}

/// A value whose encoding fails for one poisoned content.
#[derive(Clone, Deserialize)]
struct Fussy(u64);

impl Serialize for Fussy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("thirteen cannot be stored"));
        }
        s.serialize_u64(self.0)
    }
}

#[test]
fn a_state_that_cannot_be_encoded_fails_the_capture_not_the_write() {
    let mut b = backend();
    let v = b.value_state::<Fussy>("fussy").expect("value");
    b.set_current_key(1).expect("key");
    v.set(&mut b, Fussy(13)).expect("set");
    let capture = b.capture();
    // The task settles the group: the encoding fails there, but the write goes through.
    v.set(&mut b, Fussy(14)).expect("the write itself succeeds");
    assert_eq!(v.get(&b).expect("get").map(|f| f.0), Some(14));
    for result in [
        capture.encode().map(|_| ()),
        capture
            .encode_task_snapshot(&Default::default())
            .map(|_| ()),
    ] {
        match result {
            Err(Error::Codec { reason, what, .. }) => {
                assert!(what.contains("fussy"), "{what}");
                assert!(reason.contains("thirteen"), "{reason}");
            }
            other => panic!("expected an encoding error, got {other:?}"),
        }
    }
    // The next capture holds the good value and encodes.
    b.snapshot().expect("a later snapshot encodes");
}
