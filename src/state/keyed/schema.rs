//! State schemas and their evolution: what a snapshot says about each state's values
//! ([`StateSchema`], written once per state in a keyed snapshot's header), how an application
//! declares a state's version and the migrations from older ones ([`StateVersion`]), and how a
//! restore turns values stored under another schema into the current type ([`Evolution`]).
//!
//! Values stay positional MessagePack (a struct is the array of its fields), so the bytes per
//! key do not change; the header records, once per state, the version and two lists of the
//! *element* type (a value, reducing or aggregating state's value, a list state's element, a
//! map state's value): the names its `Deserialize` takes (fields and aliases, as serde lists
//! them, known without a value) and the field names its values were stored with (probed from
//! one stored value, since serde lists aliases among the names it takes). A restore whose
//! version and taken names equal the current ones decodes the bytes as they are (the fast
//! path: nothing is done per value). Otherwise every element is rewritten before the typed
//! decode: the registered migrations are applied, one version after the other, and a struct
//! stored as an array is handed to the type's `Deserialize` as a map from the stored names, so
//! serde's own attributes decide: a new field needs `#[serde(default)]`, a removed one is
//! ignored, a renamed one is found by `#[serde(alias = "old")]`. Only the element type's own
//! fields are named: a change inside a nested struct needs a migration.
//!
//! **Invariant:** the bytes of a state are never decoded as a type they were not written as
//! without this rewrite; any failure is [`Error::StateIncompatible`] (Fatal: the same code can
//! never restore the same bytes), naming the state and both schemas.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use super::kinds::StateKind;
use crate::codec;
use crate::error::{Error, Result};
use crate::state::value::StateValue;
use crate::state::Dynamic;

/// What the stored values of one state are, as a snapshot's header records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSchema {
    /// The state's name.
    pub name: String,
    /// The version the application declared for the state ([`StateVersion`]; 1 unless
    /// declared).
    pub version: u32,
    /// The element type, as `std::any::type_name` spells it.
    pub value_type: String,
    /// The names the element type's `Deserialize` takes when it is a struct: its fields and
    /// their aliases, as serde lists them; `None` for any other type. Two schemas of one
    /// version that agree on them read each other's values as they are.
    pub decodes: Option<Vec<String>>,
    /// The field names the values were stored with, in order (a struct is stored as the array
    /// of its fields): probed from a stored value, so `None` for a state that held none, or
    /// whose element type is not a struct.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl StateSchema {
    /// The schema of a state named `name` whose elements are `E`, at `version`.
    pub(crate) fn of<E: StateValue>(name: &str, version: u32) -> StateSchema {
        StateSchema {
            name: name.to_string(),
            version,
            value_type: std::any::type_name::<E>().to_string(),
            decodes: struct_fields::<E>(),
            fields: None,
        }
    }

    /// This schema with the field names `value` (an element of the state) is stored with, when
    /// the element type is a struct.
    pub(crate) fn probed<E: StateValue>(&self, value: &E) -> StateSchema {
        let fields = self.decodes.as_ref().and_then(|_| {
            let named = rmp_serde::to_vec_named(value).ok()?;
            match Dynamic::from_msgpack(&named).ok()? {
                Dynamic::Map(entries) => entries
                    .into_iter()
                    .map(|(k, _)| match k {
                        Dynamic::Str(name) => Some(name),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        });
        StateSchema {
            fields,
            ..self.clone()
        }
    }
}

impl fmt::Display for StateSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version {} of {}", self.version, self.value_type)?;
        if let Some(fields) = self.fields.as_ref().or(self.decodes.as_ref()) {
            write!(f, " {{ {} }}", fields.join(", "))?;
        }
        Ok(())
    }
}

/// The field names of `T` when it deserializes as a struct, found without a value: `T`'s
/// `Deserialize` is driven by a deserializer that notes what `deserialize_struct` is given and
/// stops there.
fn struct_fields<T: StateValue>() -> Option<Vec<String>> {
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    struct Probe<'a>(&'a mut Option<Vec<String>>);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Stop> {
            *self.0 = Some(fields.iter().map(|f| f.to_string()).collect());
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

type Apply = dyn Fn(Dynamic) -> std::result::Result<Dynamic, String> + Send + Sync;

/// One registered migration: values of version `from` (type `Old`) to `from + 1` (`New`),
/// taking an element as stored (a struct as a map from its field names) and returning the new
/// one the same way.
struct Migration {
    from: u32,
    old: (TypeId, &'static str),
    new: (TypeId, &'static str),
    apply: Box<Apply>,
}

/// The version of a state and the migrations from its older versions, declared with
/// [`KeyedStateBackend::declare_version`](super::KeyedStateBackend::declare_version) before the
/// state is registered.
///
/// A state without a declaration is at version 1. Bump the version when the meaning or the
/// type of the stored values changes in a way serde's attributes cannot express, and register a
/// migration from each older version still in checkpoints:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # use snapflow::state::StateVersion;
/// #[derive(Clone, Serialize, Deserialize)]
/// struct TotalV1 { cents: u64 }
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Total { amount: f64, currency: String }
///
/// let v2 = StateVersion::new(2).migrate(1, |old: TotalV1| Total {
///     amount: old.cents as f64 / 100.0,
///     currency: "EUR".into(),
/// });
/// assert_eq!(v2.version(), 2);
/// ```
pub struct StateVersion {
    version: u32,
    migrations: Vec<Migration>,
}

impl fmt::Debug for StateVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateVersion")
            .field("version", &self.version)
            .field(
                "migrations",
                &self
                    .migrations
                    .iter()
                    .map(|m| format!("{} -> {}: {} -> {}", m.from, m.from + 1, m.old.1, m.new.1))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl StateVersion {
    /// Version `version` (at least 1) of a state, with no migrations yet.
    pub fn new(version: u32) -> StateVersion {
        StateVersion {
            version,
            migrations: Vec::new(),
        }
    }

    /// The declared version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Registers how a value stored at version `from` (as an `Old`) becomes one of version
    /// `from + 1` (a `New`). A restore applies the migrations from the stored version up to
    /// this one in turn, so the last one's `New` is the state's element type. `Old` is decoded
    /// from the stored bytes by field names like any other restored value, so it may itself
    /// differ from what was stored by serde-compatible changes.
    pub fn migrate<Old: StateValue, New: StateValue>(
        mut self,
        from: u32,
        f: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> StateVersion {
        let apply = move |value: Dynamic| {
            let bytes =
                codec::encode(&Raw(&value), "a migrated value").map_err(|e| e.to_string())?;
            let old: Old = codec::decode(&bytes, std::any::type_name::<Old>())
                .map_err(|e| format!("as the migration's input: {e}"))?;
            // Named, so that the next step (or the state's type) reads it by field names.
            let new = rmp_serde::to_vec_named(&f(old)).map_err(|e| e.to_string())?;
            Dynamic::from_msgpack(&new).map_err(|e| e.to_string())
        };
        self.migrations.push(Migration {
            from,
            old: (TypeId::of::<Old>(), std::any::type_name::<Old>()),
            new: (TypeId::of::<New>(), std::any::type_name::<New>()),
            apply: Box::new(apply),
        });
        self
    }
}

/// How a registered state restores stored values: its current schema and its migrations.
pub(crate) struct Evolution {
    pub(crate) current: Arc<StateSchema>,
    kind: StateKind,
    migrations: BTreeMap<u32, Migration>,
}

impl Evolution {
    /// The evolution of state `name` of `kind` with elements `E`, at `declared` (version 1 with
    /// no migrations when `None`). A declaration whose migrations do not chain up to `E` is a
    /// [`Error::Config`].
    pub(crate) fn new<E: StateValue>(
        name: &str,
        kind: StateKind,
        declared: Option<StateVersion>,
    ) -> Result<Evolution> {
        let declared = declared.unwrap_or_else(|| StateVersion::new(1));
        let config = |what: String| Error::Config(format!("state '{name}': {what}"));
        if declared.version == 0 {
            return Err(config("versions start at 1".into()));
        }
        let mut migrations = BTreeMap::new();
        for m in declared.migrations {
            if m.from == 0 || m.from >= declared.version {
                return Err(config(format!(
                    "a migration from version {} cannot lead to version {} (migrations go from v to v + 1, below the declared version)",
                    m.from, declared.version
                )));
            }
            if let Some(dup) = migrations.insert(m.from, m) {
                return Err(config(format!("two migrations from version {}", dup.from)));
            }
        }
        let element = (TypeId::of::<E>(), std::any::type_name::<E>());
        for (from, m) in &migrations {
            let next = migrations.get(&(from + 1)).map(|n| n.old);
            let expected = match next {
                Some(old) => old,
                None if from + 1 == declared.version => element,
                None => continue,
            };
            if m.new.0 != expected.0 {
                return Err(config(format!(
                    "the migration from version {from} makes a {} but version {} is a {}",
                    m.new.1,
                    from + 1,
                    expected.1
                )));
            }
        }
        Ok(Evolution {
            current: Arc::new(StateSchema::of::<E>(name, declared.version)),
            kind,
            migrations,
        })
    }

    /// True when values stored under `stored` decode as the current type without a rewrite
    /// (always for snapshots written before schemas were recorded: they have none).
    pub(crate) fn is_direct(&self, stored: Option<&StateSchema>) -> bool {
        stored
            .is_none_or(|s| s.version == self.current.version && s.decodes == self.current.decodes)
    }

    /// The error for values stored under `stored` that cannot become the current type.
    pub(crate) fn incompatible(
        &self,
        stored: Option<&StateSchema>,
        reason: impl fmt::Display,
    ) -> Error {
        Error::StateIncompatible(Box::new(crate::error::StateIncompatibility {
            state: self.current.name.clone(),
            stored: stored.map_or_else(
                || "an unrecorded schema (a snapshot of an older snapflow)".to_string(),
                |s| s.to_string(),
            ),
            current: self.current.to_string(),
            reason: reason.to_string(),
        }))
    }

    /// `data` (one key group's encoded map of this state, stored under `stored`) rewritten so
    /// that it decodes as the current type: named (a struct stored as an array becomes a map
    /// from its stored field names), then migrated.
    pub(crate) fn rewrite(&self, stored: &StateSchema, data: &[u8]) -> Result<Vec<u8>> {
        let fail = |reason: String| self.incompatible(Some(stored), reason);
        if stored.version > self.current.version {
            return Err(fail(
                "the snapshot was written by a newer version of the state; it cannot be restored by an older one".into(),
            ));
        }
        let steps = (stored.version..self.current.version)
            .map(|v| {
                self.migrations.get(&v).ok_or_else(|| {
                    fail(format!(
                        "no migration from version {v} to {} is registered (StateVersion::migrate)",
                        v + 1
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let element = |value: Dynamic| -> std::result::Result<Dynamic, String> {
            let mut value = named(value, stored.fields.as_deref());
            for m in &steps {
                value = (m.apply)(value)
                    .map_err(|e| format!("migrating from version {}: {e}", m.from))?;
            }
            Ok(value)
        };
        let Dynamic::Map(entries) = Dynamic::from_msgpack(data).map_err(|e| fail(e.to_string()))?
        else {
            return Err(fail("the stored group is not a map of keys".into()));
        };
        let mut rewritten = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let value = match (self.kind, value) {
                (StateKind::List, Dynamic::Array(items)) => items
                    .into_iter()
                    .map(element)
                    .collect::<std::result::Result<_, _>>()
                    .map(Dynamic::Array),
                (StateKind::Map, Dynamic::Map(items)) => items
                    .into_iter()
                    .map(|(k, v)| Ok((k, element(v)?)))
                    .collect::<std::result::Result<_, String>>()
                    .map(Dynamic::Map),
                // Not what a list or map state stores: the typed decode reports it.
                (StateKind::List | StateKind::Map, other) => Ok(other),
                (_, v) => element(v),
            }
            .map_err(fail)?;
            rewritten.push((key, value));
        }
        codec::encode(&Raw(&Dynamic::Map(rewritten)), "a rewritten key group")
    }
}

/// `value` as a map from field names when it is a struct stored as the array of `stored`;
/// unchanged otherwise.
fn named(value: Dynamic, stored: Option<&[String]>) -> Dynamic {
    match (value, stored) {
        (Dynamic::Array(items), Some(names)) if items.len() == names.len() => Dynamic::Map(
            names
                .iter()
                .map(|n| Dynamic::Str(n.clone()))
                .zip(items)
                .collect(),
        ),
        (value, _) => value,
    }
}

/// A [`Dynamic`] serialized as the MessagePack it was read from (bytes as bytes, maps with
/// their own keys), unlike `Dynamic`'s own JSON-friendly `Serialize`.
struct Raw<'a>(&'a Dynamic);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Dynamic::Nil => s.serialize_unit(),
            Dynamic::Bool(b) => s.serialize_bool(*b),
            Dynamic::Int(i) => s.serialize_i64(*i),
            Dynamic::UInt(u) => s.serialize_u64(*u),
            Dynamic::Float(x) => s.serialize_f64(*x),
            Dynamic::Str(x) => s.serialize_str(x),
            Dynamic::Bytes(b) => s.serialize_bytes(b),
            Dynamic::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(&Raw(x))?;
                }
                seq.end()
            }
            Dynamic::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(&Raw(k), &Raw(v))?;
                }
                map.end()
            }
        }
    }
}
