//! The backend's core: [`KeyedStateBackend`] itself, its current key, and the registration
//! of states (a table each).

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::kinds::{StateKey, StateKind};
use super::map::StateMap;
use super::schema::{Evolution, StateSchema, StateVersion};
use super::slots::BufferPool;
use super::snapshot::Pending;
use super::table::{ErasedTable, Probe, Table};
use crate::error::{Error, Result};
use crate::state::key_group::{key_group_for, KeyGroup, KeyGroupRange};
use crate::state::value::StateValue;

pub(super) struct Current<K> {
    pub(super) key: K,
    pub(super) gi: usize,
}

static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

/// The keyed state of one task. See the module documentation.
pub struct KeyedStateBackend<K: StateKey> {
    pub(super) id: u64,
    pub(super) range: KeyGroupRange,
    pub(super) max_parallelism: u32,
    pub(super) tables: Vec<Box<dyn ErasedTable<K>>>,
    pub(super) by_name: HashMap<String, usize>,
    pub(super) current: Option<Current<K>>,
    pub(super) pending: HashMap<String, Pending>,
    /// Versions declared for states not registered yet.
    pub(super) declared: HashMap<String, StateVersion>,
}

impl<K: StateKey> fmt::Debug for KeyedStateBackend<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStateBackend")
            .field("range", &self.range)
            .field("max_parallelism", &self.max_parallelism)
            .field("states", &self.by_name.keys().collect::<Vec<_>>())
            .field("entries", &self.entries())
            .finish()
    }
}

impl<K: StateKey> KeyedStateBackend<K> {
    /// An empty backend for the key groups `range` of a vertex with `max_parallelism` groups.
    pub fn new(range: KeyGroupRange, max_parallelism: u32) -> Result<KeyedStateBackend<K>> {
        let all = KeyGroupRange::all(max_parallelism)?;
        if range.start > range.end || range.end > all.end {
            return Err(Error::Config(format!(
                "key group range {range} is not within {all}"
            )));
        }
        Ok(KeyedStateBackend {
            id: NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed),
            range,
            max_parallelism,
            tables: Vec::new(),
            by_name: HashMap::new(),
            current: None,
            pending: HashMap::new(),
            declared: HashMap::new(),
        })
    }

    /// The key groups this backend owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// The number of key groups of the vertex.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// Sets the key that state handles read and write, and returns its key group.
    pub fn set_current_key(&mut self, key: K) -> Result<KeyGroup> {
        let kg = key_group_for(&key, self.max_parallelism);
        if !self.range.contains(kg) {
            return Err(Error::KeyGroupNotOwned {
                key_group: kg,
                range: self.range,
            });
        }
        self.current = Some(Current {
            key,
            gi: usize::from(kg.0 - self.range.start),
        });
        Ok(kg)
    }

    /// The current key, if one is set.
    pub fn current_key(&self) -> Option<&K> {
        self.current.as_ref().map(|c| &c.key)
    }

    /// Every state registered, by name.
    pub fn descriptors(&self) -> Vec<crate::state::StateDescriptor> {
        self.tables
            .iter()
            .map(|t| crate::state::StateDescriptor {
                name: t.name().to_string(),
                kind: format!("{:?}", t.kind()),
                value_type: t.value_type().1.to_string(),
            })
            .collect()
    }

    /// The number of (state, key) entries held.
    pub fn entries(&self) -> usize {
        self.tables.iter().map(|t| t.entries()).sum()
    }

    /// Declares the version of state `name` and the migrations from its older versions
    /// ([`StateVersion`]), for the registration of `name` that follows. Restored values stored
    /// at an older version are migrated when the state registers (so that an incompatible
    /// checkpoint fails there, before any record is processed: register states when the
    /// operator opens); the next checkpoint stores them at the declared version. A state
    /// registered already cannot be declared ([`Error::Config`]).
    pub fn declare_version(&mut self, name: &str, version: StateVersion) -> Result<()> {
        if self.by_name.contains_key(name) {
            return Err(Error::Config(format!(
                "state '{name}' is registered already: declare its version before registering it"
            )));
        }
        self.declared.insert(name.to_string(), version);
        Ok(())
    }

    /// Registers state `name` of `kind`, stored as `T` (per key) made of elements `E` (a
    /// value, a list's element, a map's value), or finds it.
    pub(super) fn register<T: StateValue, E: StateValue>(
        &mut self,
        name: &str,
        kind: StateKind,
        element: fn(&T) -> Option<&E>,
    ) -> Result<usize> {
        let requested = || format!("{kind:?} of {}", std::any::type_name::<T>());
        if let Some(&id) = self.by_name.get(name) {
            let t = &self.tables[id];
            let (tid, tname) = t.value_type();
            if t.kind() != kind || tid != TypeId::of::<T>() {
                return Err(Error::StateTypeMismatch {
                    name: name.to_string(),
                    existing: format!("{:?} of {tname}", t.kind()),
                    requested: requested(),
                });
            }
            return Ok(id);
        }
        let evolution = Evolution::new::<E>(name, kind, self.declared.remove(name))?;
        let probe: Option<Probe<T>> = evolution.current.decodes.as_ref().map(|_| {
            Box::new(move |s: &StateSchema, v: &T| element(v).map(|e| s.probed(e))) as Probe<T>
        });
        let mut table: Table<K, T> = Table {
            name: name.to_string(),
            kind,
            schema: Arc::clone(&evolution.current),
            probe,
            evolution: Arc::new(evolution),
            groups: (0..self.range.len())
                .map(|_| Arc::new(StateMap::default()))
                .collect(),
            capture: Weak::new(),
            captured: vec![false; self.range.len()],
            pool: BufferPool::default(),
        };
        if let Some(pending) = self.pending.get(name) {
            for p in pending {
                if p.kind != kind {
                    return Err(Error::StateTypeMismatch {
                        name: name.to_string(),
                        existing: format!("{:?} (in the restored snapshot)", p.kind),
                        requested: requested(),
                    });
                }
                table.restore_group(p.gi, p.kg, &p.data, None, p.schema.as_deref())?;
            }
            self.pending.remove(name);
        }
        self.tables.push(Box::new(table));
        self.by_name.insert(name.to_string(), self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    /// Drops every entry of every state, and any restored bytes not yet registered.
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            t.clear();
        }
        self.pending.clear();
        self.current = None;
    }
}
