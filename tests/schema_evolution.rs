//! State schema evolution over value, list and map state: every change kind (a field added
//! with a default, a field removed, a field renamed with an alias, a type changed by a
//! registered migration) restores what version 1 stored, and the next snapshot is written in
//! the new schema; an incompatible change fails as `StateIncompatible` (Fatal) naming the state
//! and both versions, never as `StateCorrupt`.

mod common;

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{check_updates, count_sink, poll_until};
use serde::{Deserialize, Serialize};
use snapflow::checkpoint::{CheckpointTiming, LocalCheckpointStorage};
use snapflow::prelude::*;
use snapflow::state::{
    KeyGroupRange, KeyedSnapshot, KeyedStateBackend, StateValue, StateVersion, ValueState,
};
use snapflow::{Error, ErrorClass, FileSink, StartFrom, TypedLog};

const MAX_P: u32 = 128;
const KEYS: u64 = 300;
const STATE: &str = "accounts";

/// Version 1 of the application's state type.
mod v1 {
    use super::*;
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Account {
        pub(crate) owner: String,
        pub(crate) balance: i64,
        pub(crate) legacy: u32,
    }
}

fn account(k: u64, i: u64) -> v1::Account {
    v1::Account {
        owner: format!("owner-{k}-{i}"),
        balance: k as i64 * 10 - i as i64 - 1_000,
        legacy: (k + i) as u32,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Value,
    List,
    Map,
}

const SHAPES: [Shape; 3] = [Shape::Value, Shape::List, Shape::Map];

fn backend() -> KeyedStateBackend<u64> {
    KeyedStateBackend::new(KeyGroupRange::all(MAX_P).expect("range"), MAX_P).expect("backend")
}

/// A snapshot of state `STATE` of `shape` written with `T` (made from version 1's accounts by
/// `make`) at `version`.
fn write<T: StateValue>(
    shape: Shape,
    version: Option<StateVersion>,
    make: impl Fn(v1::Account) -> T,
) -> KeyedSnapshot {
    let mut b = backend();
    if let Some(v) = version {
        b.declare_version(STATE, v).expect("declare");
    }
    match shape {
        Shape::Value => {
            let s = b.value_state::<T>(STATE).expect("register");
            for k in 0..KEYS {
                b.set_current_key(k).expect("key");
                s.set(&mut b, make(account(k, 0))).expect("set");
            }
        }
        Shape::List => {
            let s = b.list_state::<T>(STATE).expect("register");
            for k in 0..KEYS {
                b.set_current_key(k).expect("key");
                for i in 0..2 {
                    s.add(&mut b, make(account(k, i))).expect("add");
                }
            }
        }
        Shape::Map => {
            let s = b.map_state::<String, T>(STATE).expect("register");
            for k in 0..KEYS {
                b.set_current_key(k).expect("key");
                for i in 0..2 {
                    s.put(&mut b, format!("a{i}"), make(account(k, i)))
                        .expect("put");
                }
            }
        }
    }
    b.snapshot().expect("snapshot")
}

fn v1_snapshot(shape: Shape) -> KeyedSnapshot {
    write(shape, None, |a| a)
}

/// Restores `snap` into state `STATE` of `shape` as a `New` (declared at `version`), the
/// state registered before the restore or after it (as the runtime does: restore, then the
/// operator registers), and checks every key's values against `expect` of what was stored.
/// Returns the next snapshot.
fn read<New: StateValue + PartialEq + Debug>(
    shape: Shape,
    snap: &KeyedSnapshot,
    version: Option<StateVersion>,
    register_first: bool,
    expect: impl Fn(v1::Account) -> New,
) -> snapflow::Result<KeyedSnapshot> {
    let mut b = backend();
    if let Some(v) = version {
        b.declare_version(STATE, v)?;
    }
    macro_rules! restore_around {
        ($register:expr) => {{
            if register_first {
                let s = $register?;
                b.restore([snap])?;
                s
            } else {
                b.restore([snap])?;
                $register?
            }
        }};
    }
    match shape {
        Shape::Value => {
            let s = restore_around!(b.value_state::<New>(STATE));
            for k in 0..KEYS {
                b.set_current_key(k)?;
                assert_eq!(s.get(&b)?, Some(&expect(account(k, 0))), "key {k}");
            }
        }
        Shape::List => {
            let s = restore_around!(b.list_state::<New>(STATE));
            for k in 0..KEYS {
                b.set_current_key(k)?;
                let want: Vec<New> = (0..2).map(|i| expect(account(k, i))).collect();
                assert_eq!(s.get(&b)?, &want[..], "key {k}");
            }
        }
        Shape::Map => {
            let s = restore_around!(b.map_state::<String, New>(STATE));
            for k in 0..KEYS {
                b.set_current_key(k)?;
                for i in 0..2 {
                    let got = s.get(&b, &format!("a{i}"))?;
                    assert_eq!(got, Some(&expect(account(k, i))), "key {k} entry {i}");
                }
            }
        }
    }
    b.snapshot()
}

/// Runs one change over every shape and both registration orders; then checks that the next
/// snapshot is written in the new schema (`version`, `fields`) and restores as it is.
fn evolves<New: StateValue + PartialEq + Debug>(
    version: impl Fn() -> Option<StateVersion>,
    fields: &[&str],
    expect: impl Fn(v1::Account) -> New + Copy,
) {
    for shape in SHAPES {
        let snap = v1_snapshot(shape);
        for register_first in [false, true] {
            let next = read(shape, &snap, version(), register_first, expect)
                .unwrap_or_else(|e| panic!("{shape:?} (register first: {register_first}): {e}"));
            let schema = next
                .schemas
                .iter()
                .find(|s| s.name == STATE)
                .expect("the next snapshot records the state's schema");
            let declared = version().map_or(1, |v| v.version());
            assert_eq!(schema.version, declared, "{shape:?}");
            let want: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            assert_eq!(schema.fields.as_ref(), Some(&want), "{shape:?}");
            // Written in the new schema: it restores as it is, with no migration registered.
            let same = version().map(|v| StateVersion::new(v.version()));
            read(shape, &next, same, false, expect)
                .unwrap_or_else(|e| panic!("{shape:?}: the next snapshot: {e}"));
        }
    }
}

#[test]
fn a_field_added_with_a_default_restores_value_list_and_map_state() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Account {
        owner: String,
        balance: i64,
        legacy: u32,
        #[serde(default)]
        tags: Vec<String>,
    }
    evolves(
        || None,
        &["owner", "balance", "legacy", "tags"],
        |a: v1::Account| Account {
            owner: a.owner,
            balance: a.balance,
            legacy: a.legacy,
            tags: Vec::new(),
        },
    );
}

#[test]
fn a_removed_field_restores_value_list_and_map_state() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Account {
        owner: String,
        balance: i64,
    }
    evolves(
        || None,
        &["owner", "balance"],
        |a: v1::Account| Account {
            owner: a.owner,
            balance: a.balance,
        },
    );
}

#[test]
fn a_field_renamed_with_an_alias_restores_value_list_and_map_state() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Account {
        #[serde(alias = "owner")]
        holder: String,
        balance: i64,
        legacy: u32,
    }
    evolves(
        || None,
        &["holder", "balance", "legacy"],
        |a: v1::Account| Account {
            holder: a.owner,
            balance: a.balance,
            legacy: a.legacy,
        },
    );
}

/// Version 3: the balance became a decimal string and `legacy` a flag; version 2 in between.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AccountV2 {
    owner: String,
    cents: i128,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AccountV3 {
    owner: String,
    balance: String,
}

fn to_v2(a: v1::Account) -> AccountV2 {
    AccountV2 {
        owner: a.owner,
        cents: i128::from(a.balance) * 100,
    }
}

fn to_v3(a: AccountV2) -> AccountV3 {
    AccountV3 {
        owner: a.owner.to_uppercase(),
        balance: format!("{}.{:02}", a.cents / 100, (a.cents % 100).abs()),
    }
}

fn v3() -> StateVersion {
    StateVersion::new(3).migrate(1, to_v2).migrate(2, to_v3)
}

#[test]
fn a_type_changed_by_registered_migrations_restores_value_list_and_map_state() {
    evolves(|| Some(v3()), &["owner", "balance"], |a| to_v3(to_v2(a)));
    // A snapshot stored at version 2 takes only the second step.
    for shape in SHAPES {
        let at2 = write(shape, Some(StateVersion::new(2).migrate(1, to_v2)), to_v2);
        read(shape, &at2, Some(v3()), false, |a| to_v3(to_v2(a))).expect("2 -> 3");
    }
}

fn incompatible<New: StateValue + PartialEq + Debug>(
    version: impl Fn() -> Option<StateVersion>,
    expect: impl Fn(v1::Account) -> New + Copy,
    words: &[&str],
) {
    for shape in SHAPES {
        let snap = v1_snapshot(shape);
        for register_first in [false, true] {
            let err = read(shape, &snap, version(), register_first, expect)
                .expect_err("an incompatible change must not restore");
            assert!(
                matches!(err, Error::StateIncompatible(_)),
                "{shape:?}: not StateIncompatible: {err:?}"
            );
            assert_eq!(err.class(), ErrorClass::Fatal, "{shape:?}");
            let text = err.to_string();
            for w in words {
                assert!(text.contains(w), "{shape:?}: {w:?} not in {text}");
            }
        }
    }
}

#[test]
fn a_field_added_without_a_default_fails_as_fatal_naming_state_and_versions() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Account {
        owner: String,
        balance: i64,
        legacy: u32,
        opened: u64,
    }
    incompatible(
        || None,
        |a: v1::Account| Account {
            owner: a.owner,
            balance: a.balance,
            legacy: a.legacy,
            opened: 0,
        },
        &[
            "'accounts'",
            "version 1 of",
            "{ owner, balance, legacy }",
            "{ owner, balance, legacy, opened }",
            "opened",
        ],
    );
}

#[test]
fn a_field_type_changed_without_a_migration_fails_as_fatal() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Account {
        owner: String,
        balance: String,
        legacy: u32,
    }
    incompatible(
        || None,
        |a: v1::Account| Account {
            owner: a.owner,
            balance: a.balance.to_string(),
            legacy: a.legacy,
        },
        &["'accounts'", "version 1 of"],
    );
}

#[test]
fn a_version_without_a_migration_from_the_stored_one_fails_as_fatal() {
    incompatible(
        || Some(StateVersion::new(3).migrate(2, to_v3)),
        |a| to_v3(to_v2(a)),
        &[
            "'accounts'",
            "version 1 of",
            "version 3 of",
            "no migration from version 1 to 2",
        ],
    );
}

#[test]
fn a_snapshot_of_a_newer_version_fails_as_fatal_in_an_older_one() {
    for shape in SHAPES {
        let at2 = write(shape, Some(StateVersion::new(2).migrate(1, to_v2)), to_v2);
        let err = read(shape, &at2, None, false, to_v2).expect_err("a downgrade");
        assert!(matches!(err, Error::StateIncompatible(_)), "{err:?}");
        assert!(err.to_string().contains("newer version"), "{err}");
    }
}

#[test]
fn migrations_that_do_not_chain_to_the_registered_type_are_a_config_error() {
    let mut b = backend();
    // Version 2's migration makes an AccountV2, but the state registers AccountV3.
    b.declare_version(STATE, StateVersion::new(2).migrate(1, to_v2))
        .expect("declare");
    let err = b
        .value_state::<AccountV3>(STATE)
        .expect_err("a broken chain");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    // A version declared after the state registered is refused.
    let mut b = backend();
    b.value_state::<v1::Account>(STATE).expect("register");
    assert!(b.declare_version(STATE, v3()).is_err());
}

#[test]
fn reordered_fields_restore_by_name_not_position() {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Account {
        legacy: u32,
        owner: String,
        balance: i64,
    }
    evolves(
        || None,
        &["legacy", "owner", "balance"],
        |a: v1::Account| Account {
            legacy: a.legacy,
            owner: a.owner,
            balance: a.balance,
        },
    );
}

// Through real jobs: version 1 of an application stops with a savepoint; version 2, whose
// state struct gained a field, starts from it and goes on exactly once; a version whose
// struct gained a field with no default fails at once as Fatal, naming the vertex, the state
// and both versions, with no restart and nothing processed.

const JOB_KEYS: u64 = 10;

/// Version 1's per-key state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TotalV1 {
    count: u64,
}

/// Version 2's: a field added with a default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TotalV2 {
    count: u64,
    #[serde(default)]
    sum: u64,
}

/// An incompatible version: a field added without a default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TotalBroken {
    count: u64,
    since: u64,
}

/// Counts records per key in a `T` and emits `(key, count)`.
struct Count<T> {
    state: Option<ValueState<T>>,
    bump: fn(&mut T, u64) -> u64,
}

impl<T> Clone for Count<T> {
    fn clone(&self) -> Self {
        Count {
            state: self.state.clone(),
            bump: self.bump,
        }
    }
}

impl<T: StateValue + Default> KeyedOperator<u64, (u64, u64), (u64, u64)> for Count<T> {
    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.state = Some(ctx.state().value_state::<T>("total")?);
        Ok(())
    }

    fn process(
        &mut self,
        (k, v): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let state = self.state.as_ref().expect("opened");
        let total = state.get_or_insert_with(ctx.state(), T::default)?;
        out.emit((k, (self.bump)(total, v)));
        Ok(())
    }
}

fn counting_job<T: StateValue + Default>(
    root: &Path,
    log: &Arc<dyn ReplayableLog>,
    start_from: StartFrom,
    bounded: bool,
    bump: fn(&mut T, u64) -> u64,
) -> JobBuilder {
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(20)),
        start_from,
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("totals", config);
    job.checkpoint_storage(Arc::new(
        LocalCheckpointStorage::new(root.join("chk"), "totals").expect("storage"),
    ));
    let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(log));
    if bounded {
        source = source.bounded();
    }
    job.source("source", source)
        .key_by(|(k, _): &(u64, u64)| *k)
        .process("count", Count { state: None, bump })
        .sink("sink", count_sink(&root.join("out")));
    job
}

fn append(log: &Arc<dyn ReplayableLog>, from: u64, to: u64) {
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(log));
    for i in from..to {
        typed
            .append(PartitionId((i % 2) as u32), &(i % JOB_KEYS, i))
            .expect("append");
    }
}

fn committed(out: &Path) -> usize {
    FileSink::<(u64, u64)>::read_committed(out).map_or(0, |l| l.len())
}

#[actix::test]
async fn a_job_restores_an_evolved_state_type_from_a_savepoint_and_refuses_an_incompatible_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, out) = (dir.path(), dir.path().join("out"));
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    append(&log, 0, 2_000);
    let v1 = counting_job::<TotalV1>(root, &log, StartFrom::Latest, false, |t, _| {
        t.count += 1;
        t.count
    });
    let handle = v1.build().expect("build").start().await.expect("start");
    assert!(poll_until(Duration::from_secs(30), || committed(&out) >= 500).await);
    let savepoint = handle.stop_with_savepoint().await.expect("savepoint");
    handle.wait().await.expect("version 1 stops");
    append(&log, 2_000, 4_000);
    let before = committed(&out);

    // Incompatible: fails as Fatal before processing anything, with no restart.
    let broken = counting_job::<TotalBroken>(
        root,
        &log,
        StartFrom::Savepoint(savepoint.location.clone()),
        true,
        |t, _| {
            t.count += 1;
            t.count
        },
    );
    let err = common::run_to_end(broken)
        .await
        .expect_err("an incompatible state type must not start");
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    let text = err.to_string();
    for w in ["count", "'total'", "version 1 of", "{ count }", "since"] {
        assert!(text.contains(w), "{w:?} not in: {text}");
    }
    assert!(
        format!("{err:?}").contains("StateIncompatible"),
        "not a StateIncompatible: {err:?}"
    );
    assert_eq!(
        committed(&out),
        before,
        "the refused version committed output"
    );

    // Version 2 restores version 1's counts and goes on: every update exactly once.
    let v2 = counting_job::<TotalV2>(
        root,
        &log,
        StartFrom::Savepoint(savepoint.location.clone()),
        true,
        |t, v| {
            t.count += 1;
            t.sum += v;
            t.count
        },
    );
    let report = common::run_to_end(v2).await.expect("version 2 runs");
    assert_eq!(report.restarts, 0);
    let (records, lost, duplicated) = check_updates(&out, 4_000, JOB_KEYS);
    assert_eq!((records, lost, duplicated), (4_000, 0, 0));
}
