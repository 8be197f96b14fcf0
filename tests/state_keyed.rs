//! Keyed state: stable key groups, snapshots by key group, restore of any subset.

use std::collections::{BTreeMap, HashMap};

use snapflow::state::{
    key_group_for, stable_hash, KeyGroupRange, KeyedSnapshot, KeyedStateBackend, StableHash,
    StableHasher, TaskSnapshot, DEFAULT_MAX_PARALLELISM,
};
use snapflow::Error;

const G: u32 = DEFAULT_MAX_PARALLELISM;

#[test]
fn stable_key_group_values_are_pinned() {
    // These values are part of the on-disk contract: a change would move restored state to
    // the wrong tasks. Never update them without a migration.
    assert_eq!(stable_hash(&0u64), 0x7969_2586_f1c3_1436);
    assert_eq!(stable_hash(&42u64), 0x8802_126c_dea0_f6fa);
    assert_eq!(stable_hash("apple"), 0x84a9_d810_9211_8f7c);
    assert_eq!(stable_hash(&("user", 7u32)), 0xbb7a_66e1_f3f9_da29);
    let groups: Vec<u16> = ["", "a", "apple", "the", "snapflow"]
        .iter()
        .map(|k| key_group_for(*k, G).0)
        .collect();
    assert_eq!(groups, vec![54, 87, 124, 126, 103]);
    let ints: Vec<u16> = (0u64..8).map(|k| key_group_for(&k, G).0).collect();
    assert_eq!(ints, vec![54, 48, 46, 123, 99, 27, 47, 14]);
}

#[test]
fn stable_hash_does_not_depend_on_the_integer_width_or_the_container() {
    assert_eq!(stable_hash(&7usize), stable_hash(&7u64));
    assert_eq!(stable_hash(&7u8), stable_hash(&7u64));
    assert_eq!(stable_hash(&-7isize), stable_hash(&-7i64));
    assert_eq!(stable_hash(&String::from("x")), stable_hash("x"));
    assert_ne!(
        stable_hash(&("ab", "c")),
        stable_hash(&("a", "bc")),
        "lengths are hashed"
    );
    struct UserKey {
        tenant: u32,
        name: String,
    }
    impl StableHash for UserKey {
        fn stable_hash(&self, h: &mut StableHasher) {
            self.tenant.stable_hash(h);
            self.name.stable_hash(h);
        }
    }
    let k = UserKey {
        tenant: 1,
        name: "n".into(),
    };
    assert_eq!(stable_hash(&k), stable_hash(&(1u32, "n")));
}

/// Fills a backend covering every key group with value, list and map state for `n` keys.
fn filled(n: u64) -> (KeyedStateBackend<String>, KeyedSnapshot) {
    let mut b = KeyedStateBackend::<String>::new(KeyGroupRange::all(G).expect("range"), G)
        .expect("backend");
    let v = b.value_state::<u64>("count").expect("value");
    let l = b.list_state::<u64>("seen").expect("list");
    let m = b.map_state::<u8, String>("tags").expect("map");
    for i in 0..n {
        b.set_current_key(format!("key-{i}")).expect("key");
        v.set(&mut b, i * 10).expect("set");
        l.add(&mut b, i).expect("add");
        l.add(&mut b, i + 1).expect("add");
        if i % 3 == 0 {
            m.put(&mut b, (i % 7) as u8, format!("t{i}")).expect("put");
        }
    }
    let snap = b.snapshot().expect("snapshot");
    (b, snap)
}

/// Every (key, count) pair visible in `b` among the first `n` keys.
fn counts(b: &mut KeyedStateBackend<String>, n: u64) -> BTreeMap<String, u64> {
    let v = b.value_state::<u64>("count").expect("value");
    let range = b.key_group_range();
    let mut out = BTreeMap::new();
    for i in 0..n {
        let key = format!("key-{i}");
        if !range.contains(key_group_for(&key, G)) {
            continue;
        }
        b.set_current_key(key.clone()).expect("key");
        if let Some(c) = v.get(b).expect("get") {
            out.insert(key, *c);
        }
    }
    out
}

#[test]
fn keyed_state_restore_of_a_subset_of_key_groups_gives_exactly_those_keys() {
    let n = 5_000;
    let (_, snap) = filled(n);
    let bytes = TaskSnapshot {
        keyed: Some(snap),
        operator: Default::default(),
    }
    .to_bytes()
    .expect("encode");
    let snap = TaskSnapshot::from_bytes(&bytes)
        .expect("decode")
        .keyed
        .expect("keyed");
    let mut union = BTreeMap::new();
    for i in 0..3 {
        let range = KeyGroupRange::for_task(i, 3, G).expect("range");
        let mut b = KeyedStateBackend::<String>::new(range, G).expect("backend");
        let stats = b.restore([&snap]).expect("restore");
        assert_eq!(stats.key_groups, range.len());
        let got = counts(&mut b, n);
        let expected: BTreeMap<String, u64> = (0..n)
            .map(|i| (format!("key-{i}"), i * 10))
            .filter(|(k, _)| range.contains(key_group_for(k, G)))
            .collect();
        assert_eq!(got, expected, "task {i}");
        // Lists and maps came back too.
        let l = b.list_state::<u64>("seen").expect("list");
        let m = b.map_state::<u8, String>("tags").expect("map");
        let with_tags = expected.values().filter(|c| (*c / 10) % 3 == 0).count();
        assert_eq!(
            b.entries(),
            expected.len() * 2 + with_tags,
            "value + list + map entries of exactly the owned keys"
        );
        for (k, c) in &expected {
            let i = c / 10;
            b.set_current_key(k.clone()).expect("key");
            assert_eq!(l.get(&b).expect("list"), &[i, i + 1]);
            let tag = m.get(&b, &((i % 7) as u8)).expect("map").cloned();
            assert_eq!(tag, (i % 3 == 0).then(|| format!("t{i}")));
        }
        union.extend(got);
    }
    assert_eq!(
        union.len() as u64,
        n,
        "the three tasks together hold every key once"
    );
}

#[test]
fn rescaling_from_three_tasks_to_two_restores_every_key_once() {
    let n = 3_000;
    let (_, all) = filled(n);
    // Split the state over 3 tasks, snapshot each, then restore at parallelism 2.
    let mut old = Vec::new();
    for i in 0..3 {
        let mut b =
            KeyedStateBackend::<String>::new(KeyGroupRange::for_task(i, 3, G).expect("r"), G)
                .expect("b");
        b.restore([&all]).expect("restore");
        old.push(b.snapshot().expect("snapshot"));
    }
    let mut seen = HashMap::new();
    for j in 0..2 {
        let mut b =
            KeyedStateBackend::<String>::new(KeyGroupRange::for_task(j, 2, G).expect("r"), G)
                .expect("b");
        b.restore(old.iter()).expect("restore from three snapshots");
        for (k, c) in counts(&mut b, n) {
            assert!(seen.insert(k, c).is_none(), "a key restored twice");
        }
    }
    assert_eq!(seen.len() as u64, n);
    assert!(seen.iter().all(|(k, c)| format!("key-{}", c / 10) == *k));
}

#[test]
fn state_registered_after_restore_gets_its_data_and_unregistered_state_is_carried_over() {
    let (_, snap) = filled(100);
    let range = KeyGroupRange::all(G).expect("range");
    let mut b = KeyedStateBackend::<String>::new(range, G).expect("backend");
    b.restore([&snap]).expect("restore");
    // Only "count" is registered before the next snapshot: "seen" and "tags" must survive.
    let v = b.value_state::<u64>("count").expect("value");
    b.set_current_key("key-5".into()).expect("key");
    v.set(&mut b, 999).expect("set");
    let second = b.snapshot().expect("snapshot");
    let mut c = KeyedStateBackend::<String>::new(range, G).expect("backend");
    c.restore([&second]).expect("restore");
    let l = c.list_state::<u64>("seen").expect("list");
    let v = c.value_state::<u64>("count").expect("value");
    c.set_current_key("key-5".into()).expect("key");
    assert_eq!(l.get(&c).expect("list"), &[5, 6]);
    assert_eq!(v.get(&c).expect("value"), Some(&999));
}

#[test]
fn a_corrupt_or_mismatched_snapshot_is_an_error_and_leaves_the_backend_empty() {
    let (_, snap) = filled(200);
    let range = KeyGroupRange::all(G).expect("range");

    let mut flipped = snap.clone();
    flipped.groups[3].bytes[5] ^= 0x10;
    let mut b = KeyedStateBackend::<String>::new(range, G).expect("backend");
    let err = b.restore([&flipped]).expect_err("checksum");
    assert!(
        matches!(
            err,
            Error::StateCorrupt {
                key_group: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(b.entries(), 0);

    // A blob whose checksum matches but whose keys belong to another group.
    let mut moved = snap.clone();
    let other = moved.groups[1].key_group;
    moved.groups[0].key_group = other;
    moved.groups.remove(1);
    let err = b.restore([&moved]).expect_err("stray keys");
    assert!(err.to_string().contains("key group"), "{err}");

    let err = b.restore([&snap, &snap]).expect_err("duplicate groups");
    assert!(err.to_string().contains("more than one"), "{err}");

    let mut other_g =
        KeyedStateBackend::<String>::new(KeyGroupRange::all(64).expect("r"), 64).expect("b");
    assert!(
        other_g.restore([&snap]).is_err(),
        "max parallelism cannot change"
    );

    // Type confusion: the snapshot's "count" is a u64 value state.
    let mut typed = KeyedStateBackend::<String>::new(range, G).expect("backend");
    typed.restore([&snap]).expect("restore");
    assert!(typed.value_state::<String>("count").is_err());

    // Garbage bytes never panic.
    assert!(TaskSnapshot::from_bytes(&[0xde, 0xad, 0xbe, 0xef]).is_err());
}

#[test]
fn restore_refuses_snapshots_that_do_not_cover_the_owned_key_groups() {
    let n = 600;
    let (_, all) = filled(n);
    // Split the state over 3 tasks: [0, 42), [42, 85), [85, 128).
    let old: Vec<KeyedSnapshot> = (0..3)
        .map(|i| {
            let mut b =
                KeyedStateBackend::<String>::new(KeyGroupRange::for_task(i, 3, G).expect("r"), G)
                    .expect("b");
            b.restore([&all]).expect("restore");
            b.snapshot().expect("snapshot")
        })
        .collect();

    // Task 0 of 2 owns [0, 64): old tasks 0 and 1 cover it, old task 0 alone does not.
    let first_half = KeyGroupRange::for_task(0, 2, G).expect("range");
    let mut b = KeyedStateBackend::<String>::new(first_half, G).expect("backend");
    let v = b.value_state::<u64>("count").expect("value");
    b.restore([&old[0], &old[1]])
        .expect("covered by two snapshots");
    assert!(b.entries() > 0);
    let err = b
        .restore([&old[0]])
        .expect_err("half of the groups are missing");
    assert!(
        matches!(
            err,
            Error::StateCorrupt {
                key_group: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(b.entries(), 0, "a failed restore leaves the backend empty");
    assert!(
        b.snapshot().expect("snapshot").groups.is_empty(),
        "and holds no restored bytes either"
    );
    b.set_current_key(
        (0..n)
            .map(|i| format!("key-{i}"))
            .find(|k| first_half.contains(key_group_for(k, G)))
            .expect("a key of the first half"),
    )
    .expect("key");
    assert_eq!(v.get(&b).expect("get"), None);

    // Task 1 of 2 owns [64, 128): old tasks 0 and 1 leave [85, 128) uncovered.
    let second_half = KeyGroupRange::for_task(1, 2, G).expect("range");
    let mut c = KeyedStateBackend::<String>::new(second_half, G).expect("backend");
    assert!(c.restore([&old[0], &old[1]]).is_err());
    assert!(c.restore(std::iter::empty::<&KeyedSnapshot>()).is_err());
    c.restore(old.iter()).expect("all three snapshots");

    // A snapshot covers the empty groups of its range too: a single key leaves one blob, and
    // that snapshot alone restores every group.
    let full = KeyGroupRange::all(G).expect("range");
    let mut one = KeyedStateBackend::<String>::new(full, G).expect("backend");
    let v = one.value_state::<u64>("count").expect("value");
    one.set_current_key("only".into()).expect("key");
    v.set(&mut one, 1).expect("set");
    let sparse = one.snapshot().expect("snapshot");
    assert_eq!(sparse.groups.len(), 1);
    let mut d = KeyedStateBackend::<String>::new(full, G).expect("backend");
    let stats = d.restore([&sparse]).expect("sparse but covering");
    assert_eq!(stats.key_groups, 1);

    // A snapshot whose blobs lie outside the range it claims is corrupt.
    let mut lying = all.clone();
    lying.range = first_half;
    let err = d.restore([&lying]).expect_err("blobs outside the range");
    assert!(err.to_string().contains("outside"), "{err}");
    // Two snapshots claiming the same group, even where only one has a blob, are refused.
    let err = d.restore([&sparse, &old[0]]).expect_err("overlap");
    assert!(err.to_string().contains("more than one"), "{err}");
}

#[test]
fn value_and_list_entries_iterate_every_owned_key_without_a_current_key() {
    let n = 500;
    let (_, all) = filled(n);
    let range = KeyGroupRange::for_task(1, 3, G).expect("range");
    let mut b = KeyedStateBackend::<String>::new(range, G).expect("backend");
    b.restore([&all]).expect("restore");
    let v = b.value_state::<u64>("count").expect("value");
    let l = b.list_state::<u64>("seen").expect("list");
    assert!(b.current_key().is_none());

    let expected: BTreeMap<String, u64> = (0..n)
        .map(|i| (format!("key-{i}"), i * 10))
        .filter(|(k, _)| range.contains(key_group_for(k, G)))
        .collect();
    assert!(!expected.is_empty());
    let values: BTreeMap<String, u64> = v
        .entries(&b)
        .expect("entries")
        .map(|(k, c)| (k.clone(), *c))
        .collect();
    assert_eq!(values, expected);
    assert_eq!(v.entries(&b).expect("entries").count(), expected.len());
    let mut keys: Vec<String> = v.keys(&b).expect("keys").cloned().collect();
    keys.sort();
    assert_eq!(keys, expected.keys().cloned().collect::<Vec<_>>());

    let lists: BTreeMap<String, Vec<u64>> = l
        .entries(&b)
        .expect("entries")
        .map(|(k, list)| (k.clone(), list.to_vec()))
        .collect();
    let expected_lists: BTreeMap<String, Vec<u64>> = expected
        .iter()
        .map(|(k, c)| (k.clone(), vec![c / 10, c / 10 + 1]))
        .collect();
    assert_eq!(lists, expected_lists);
    assert!(b.current_key().is_none(), "iterating sets no current key");

    // A handle of another backend is refused.
    let mut other = KeyedStateBackend::<String>::new(range, G).expect("backend");
    let _ = other.value_state::<u64>("count").expect("value");
    assert!(v.entries(&other).is_err());
}

/// `get_or_insert_with` takes one path for keys that own heap memory and another for plain
/// keys; both must initialise a key once, keep later updates, and keep keys apart.
fn get_or_insert_counts<K: snapflow::state::StateKey>(keys: &[K]) -> Vec<(K, u64)> {
    let mut b =
        KeyedStateBackend::<K>::new(KeyGroupRange::all(G).expect("range"), G).expect("backend");
    let v = b.value_state::<u64>("count").expect("value");
    let mut inits = 0;
    for _ in 0..3 {
        for k in keys {
            b.set_current_key(k.clone()).expect("key");
            *v.get_or_insert_with(&mut b, || {
                inits += 1;
                100
            })
            .expect("get") += 1;
        }
    }
    assert_eq!(inits, keys.len(), "each key is initialised exactly once");
    keys.iter()
        .map(|k| {
            b.set_current_key(k.clone()).expect("key");
            (k.clone(), *v.get(&b).expect("get").expect("value"))
        })
        .collect()
}

#[test]
fn get_or_insert_with_initialises_each_key_once_for_owned_and_plain_keys() {
    let owned: Vec<String> = (0..500).map(|i| format!("key-{i}")).collect();
    for (_, count) in get_or_insert_counts(&owned) {
        assert_eq!(count, 103);
    }
    let plain: Vec<u64> = (0..500).collect();
    for (_, count) in get_or_insert_counts(&plain) {
        assert_eq!(count, 103);
    }
}

#[test]
fn streamed_task_snapshot_bytes_equal_the_structured_encoding() {
    use snapflow::state::{OperatorStateBackend, Redistribution};
    let mut ops = OperatorStateBackend::new();
    let offsets = ops
        .list_state::<u64>("offsets", Redistribution::Split)
        .expect("list");
    offsets.add(&mut ops, 42).expect("add");
    let operator = ops.snapshot().expect("operator snapshot");
    // Several sizes, a task owning part of the groups, and restored state nobody registered
    // again (carried as bytes): each must encode to exactly the bytes of the structured path.
    for n in [0u64, 1, 5, 300, 5_000] {
        let (mut full, snap) = filled(n);
        let part = KeyGroupRange { start: 17, end: 90 };
        let mut restored = KeyedStateBackend::<String>::new(part, G).expect("backend");
        restored.restore([&snap]).expect("restore");
        let v = restored.value_state::<u64>("count").expect("value");
        restored.set_current_key("extra".into()).expect("key");
        if part.contains(key_group_for(&"extra".to_string(), G)) {
            v.set(&mut restored, 7).expect("set");
        }
        for b in [&mut full, &mut restored] {
            let capture = b.capture();
            let structured = TaskSnapshot {
                keyed: Some(capture.encode().expect("encode")),
                operator: operator.clone(),
            }
            .to_bytes()
            .expect("to_bytes");
            let streamed = capture.encode_task_snapshot(&operator).expect("streamed");
            assert_eq!(streamed, structured, "n={n} range={}", b.key_group_range());
            let back = TaskSnapshot::from_bytes(&streamed).expect("decode");
            assert_eq!(back.operator, operator);
        }
    }
}
