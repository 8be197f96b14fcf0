//! Operator state: list redistribution by split and union, broadcast state.

use std::collections::BTreeMap;

use snapflow::state::{redistribute, OperatorSnapshot, OperatorStateBackend, Redistribution};

/// Three tasks with split list "offsets" (distinct elements) and union list "config".
fn three_tasks() -> Vec<OperatorSnapshot> {
    let mut out = Vec::new();
    let mut next = 0u64;
    for task in 0..3u64 {
        let mut b = OperatorStateBackend::new();
        let offsets = b
            .list_state::<u64>("offsets", Redistribution::Split)
            .expect("split");
        let config = b
            .list_state::<String>("config", Redistribution::Union)
            .expect("union");
        let bc = b
            .broadcast_state::<String, u32>("rules")
            .expect("broadcast");
        // Uneven sizes: 4, 5, 6 elements.
        for _ in 0..(4 + task) {
            offsets.add(&mut b, next).expect("add");
            next += 1;
        }
        config
            .add(&mut b, format!("from-task-{task}"))
            .expect("add");
        bc.put(&mut b, "max".into(), 10).expect("put");
        out.push(b.snapshot().expect("snapshot"));
    }
    out
}

/// One restored task: its split list, its union list, its broadcast map.
type Restored = (Vec<u64>, Vec<String>, BTreeMap<String, u32>);

fn restored_lists(snaps: Vec<OperatorSnapshot>) -> Vec<Restored> {
    snaps
        .into_iter()
        .map(|s| {
            let mut b = OperatorStateBackend::restored(s);
            let offsets = b
                .list_state::<u64>("offsets", Redistribution::Split)
                .expect("split");
            let config = b
                .list_state::<String>("config", Redistribution::Union)
                .expect("union");
            let bc = b
                .broadcast_state::<String, u32>("rules")
                .expect("broadcast");
            let rules = bc
                .entries(&b)
                .expect("entries")
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            (
                offsets.get(&b).expect("get").to_vec(),
                config.get(&b).expect("get").to_vec(),
                rules,
            )
        })
        .collect()
}

#[test]
fn operator_list_split_and_union_from_parallelism_3_to_2_and_5_lose_and_duplicate_nothing() {
    let old = three_tasks();
    for new_p in [2u32, 5, 1, 3] {
        let tasks = restored_lists(redistribute(&old, new_p).expect("redistribute"));
        assert_eq!(tasks.len(), new_p as usize);
        let mut all: Vec<u64> = tasks.iter().flat_map(|t| t.0.iter().copied()).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..15).collect::<Vec<_>>(),
            "p={new_p}: split loses and duplicates nothing"
        );
        let sizes: Vec<usize> = tasks.iter().map(|t| t.0.len()).collect();
        let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        assert!(
            max.zip(min).is_some_and(|(a, b)| a - b <= 1),
            "p={new_p}: even split {sizes:?}"
        );
        for t in &tasks {
            assert_eq!(
                t.1,
                vec!["from-task-0", "from-task-1", "from-task-2"],
                "p={new_p}: union"
            );
            assert_eq!(
                t.2,
                BTreeMap::from([("max".to_string(), 10)]),
                "p={new_p}: broadcast"
            );
        }
    }
    assert!(redistribute(&old, 0).is_err());
}

#[test]
fn unregistered_operator_state_survives_a_snapshot() {
    let old = three_tasks();
    let b = OperatorStateBackend::restored(old[0].clone());
    let again = b.snapshot().expect("snapshot");
    assert_eq!(again, old[0]);
}

#[test]
fn operator_state_refuses_type_and_mode_changes() {
    let old = three_tasks();
    let mut b = OperatorStateBackend::restored(old[0].clone());
    assert!(
        b.list_state::<u64>("offsets", Redistribution::Union)
            .is_err(),
        "mode changed"
    );
    let mut b = OperatorStateBackend::restored(old[0].clone());
    assert!(
        b.list_state::<String>("offsets", Redistribution::Split)
            .is_err(),
        "u64 read as String"
    );
    let mut b = OperatorStateBackend::new();
    b.list_state::<u64>("x", Redistribution::Split).expect("x");
    assert!(
        b.broadcast_state::<u64, u64>("x").is_err(),
        "name taken by a list"
    );
}

#[test]
fn a_failed_registration_keeps_the_restored_state_for_later_snapshots() {
    let old = three_tasks();
    let mut b = OperatorStateBackend::restored(old[0].clone());
    assert!(
        b.list_state::<u64>("offsets", Redistribution::Union)
            .is_err(),
        "mode changed"
    );
    assert!(
        b.list_state::<String>("offsets", Redistribution::Split)
            .is_err(),
        "u64 read as String"
    );
    assert!(
        b.broadcast_state::<u64, u32>("rules").is_err(),
        "String keys read as u64"
    );
    assert_eq!(
        b.snapshot().expect("snapshot"),
        old[0],
        "the restored lists and map are still carried, unchanged"
    );
    // Registering with the right mode and types still gets the restored elements.
    let offsets = b
        .list_state::<u64>("offsets", Redistribution::Split)
        .expect("split");
    assert_eq!(offsets.get(&b).expect("get"), &[0, 1, 2, 3]);
    let rules = b
        .broadcast_state::<String, u32>("rules")
        .expect("broadcast");
    assert_eq!(rules.get(&b, &"max".to_string()).expect("get"), Some(&10));
    assert_eq!(b.snapshot().expect("snapshot"), old[0]);
}
