//! Operator state: per task, not keyed.
//!
//! - List state ([`OperatorListState`]): a list per task whose elements are redistributed when
//!   the parallelism changes, either by [`Redistribution::Split`] (all tasks' elements are
//!   concatenated in task order and cut into even contiguous parts: every element goes to
//!   exactly one new task) or by [`Redistribution::Union`] (every new task gets every element).
//!   Sources keep their read offsets in split list state.
//! - Broadcast state ([`BroadcastState`]): a map that is the same on every task; on restore,
//!   every new task gets the copy of old task 0.
//!
//! Each list element and map entry is encoded on its own, so [`redistribute`] can move them
//! between tasks as bytes, without knowing their types.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use super::value::{MapKey, StateValue};
use crate::codec;
use crate::error::{Error, Result};

/// How a list state's elements are handed out when the parallelism changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Redistribution {
    /// Even split: each element goes to exactly one task.
    Split,
    /// Union: every task gets every element.
    Union,
}

/// One list state of one task, as encoded elements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSnapshot {
    /// The state's name.
    pub name: String,
    /// How the elements are redistributed.
    pub mode: Redistribution,
    /// The encoded elements, in order.
    pub items: Vec<serde_bytes::ByteBuf>,
}

/// One broadcast state of one task, as encoded entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastSnapshot {
    /// The state's name.
    pub name: String,
    /// The encoded (key, value) entries.
    pub entries: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// The operator state of one task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    /// List states, by name order.
    pub lists: Vec<ListSnapshot>,
    /// Broadcast states, by name order.
    pub broadcast: Vec<BroadcastSnapshot>,
}

/// Hands the operator state of `old` tasks (one snapshot per old task, in task order) out to
/// `new_parallelism` tasks, following each list's [`Redistribution`]. Nothing is lost and,
/// for split lists, nothing is duplicated.
pub fn redistribute(
    old: &[OperatorSnapshot],
    new_parallelism: u32,
) -> Result<Vec<OperatorSnapshot>> {
    if new_parallelism == 0 {
        return Err(Error::Config(
            "cannot redistribute operator state to 0 tasks".into(),
        ));
    }
    let p = new_parallelism as usize;
    let mut out = vec![OperatorSnapshot::default(); p];
    let mut lists: BTreeMap<&str, (Redistribution, Vec<&serde_bytes::ByteBuf>)> = BTreeMap::new();
    for task in old {
        for l in &task.lists {
            let entry = lists.entry(&l.name).or_insert((l.mode, Vec::new()));
            if entry.0 != l.mode {
                return Err(Error::StateCorrupt {
                    key_group: None,
                    reason: format!(
                        "list state '{}' has different modes on different tasks",
                        l.name
                    ),
                });
            }
            entry.1.extend(l.items.iter());
        }
    }
    for (name, (mode, items)) in lists {
        let n = items.len();
        for (j, task) in out.iter_mut().enumerate() {
            let part: Vec<serde_bytes::ByteBuf> = match mode {
                Redistribution::Union => items.iter().map(|b| (*b).clone()).collect(),
                Redistribution::Split => items[j * n / p..(j + 1) * n / p]
                    .iter()
                    .map(|b| (*b).clone())
                    .collect(),
            };
            task.lists.push(ListSnapshot {
                name: name.to_string(),
                mode,
                items: part,
            });
        }
    }
    if let Some(first) = old.first() {
        for task in &mut out {
            task.broadcast = first.broadcast.clone();
        }
    }
    Ok(out)
}

trait ErasedList: Send {
    fn name(&self) -> &str;
    fn mode(&self) -> Redistribution;
    fn elem_type(&self) -> TypeId;
    fn elem_type_name(&self) -> &'static str;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn encode(&self) -> Result<ListSnapshot>;
}

struct List<T> {
    name: String,
    mode: Redistribution,
    items: Vec<T>,
}

impl<T: StateValue> ErasedList for List<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn mode(&self) -> Redistribution {
        self.mode
    }
    fn elem_type(&self) -> TypeId {
        TypeId::of::<T>()
    }
    fn elem_type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn encode(&self) -> Result<ListSnapshot> {
        let items = self
            .items
            .iter()
            .map(|x| codec::encode(x, "operator list state").map(serde_bytes::ByteBuf::from))
            .collect::<Result<_>>()?;
        Ok(ListSnapshot {
            name: self.name.clone(),
            mode: self.mode,
            items,
        })
    }
}

trait ErasedMap: Send {
    fn name(&self) -> &str;
    fn types(&self) -> (TypeId, TypeId);
    fn type_names(&self) -> String;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn encode(&self) -> Result<BroadcastSnapshot>;
}

struct BMap<K, V> {
    name: String,
    map: HashMap<K, V>,
}

impl<K: MapKey, V: StateValue> ErasedMap for BMap<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn types(&self) -> (TypeId, TypeId) {
        (TypeId::of::<K>(), TypeId::of::<V>())
    }
    fn type_names(&self) -> String {
        format!(
            "{} -> {}",
            std::any::type_name::<K>(),
            std::any::type_name::<V>()
        )
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn encode(&self) -> Result<BroadcastSnapshot> {
        let mut entries = Vec::with_capacity(self.map.len());
        for (k, v) in &self.map {
            entries.push((
                serde_bytes::ByteBuf::from(codec::encode(k, "broadcast state key")?),
                serde_bytes::ByteBuf::from(codec::encode(v, "broadcast state value")?),
            ));
        }
        Ok(BroadcastSnapshot {
            name: self.name.clone(),
            entries,
        })
    }
}

/// A handle to an operator list state of element type `T`.
pub struct OperatorListState<T> {
    id: usize,
    _t: PhantomData<fn() -> T>,
}

/// A handle to a broadcast map state.
pub struct BroadcastState<K, V> {
    id: usize,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<T> Clone for OperatorListState<T> {
    fn clone(&self) -> Self {
        OperatorListState {
            id: self.id,
            _t: PhantomData,
        }
    }
}
impl<K, V> Clone for BroadcastState<K, V> {
    fn clone(&self) -> Self {
        BroadcastState {
            id: self.id,
            _t: PhantomData,
        }
    }
}
impl<T> fmt::Debug for OperatorListState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorListState")
            .field("id", &self.id)
            .finish()
    }
}
impl<K, V> fmt::Debug for BroadcastState<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastState")
            .field("id", &self.id)
            .finish()
    }
}

/// The operator state of one task. Restored snapshots are held as bytes until each state is
/// registered, then decoded into it.
#[derive(Default)]
pub struct OperatorStateBackend {
    lists: Vec<Box<dyn ErasedList>>,
    maps: Vec<Box<dyn ErasedMap>>,
    pending: OperatorSnapshot,
}

impl fmt::Debug for OperatorStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorStateBackend")
            .field(
                "lists",
                &self.lists.iter().map(|l| l.name()).collect::<Vec<_>>(),
            )
            .field(
                "broadcast",
                &self.maps.iter().map(|m| m.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn mismatch(name: &str, what: &str) -> Error {
    Error::StateTypeMismatch {
        name: name.to_string(),
        existing: "another kind, mode or type".into(),
        requested: what.to_string(),
    }
}

impl OperatorStateBackend {
    /// An empty backend.
    pub fn new() -> OperatorStateBackend {
        OperatorStateBackend::default()
    }

    /// Every state registered: list states, then broadcast states.
    pub fn descriptors(&self) -> Vec<crate::state::StateDescriptor> {
        let lists = self.lists.iter().map(|l| crate::state::StateDescriptor {
            name: l.name().to_string(),
            kind: format!("OperatorList({:?})", l.mode()),
            value_type: l.elem_type_name().to_string(),
        });
        let maps = self.maps.iter().map(|m| crate::state::StateDescriptor {
            name: m.name().to_string(),
            kind: "Broadcast".to_string(),
            value_type: m.type_names(),
        });
        lists.chain(maps).collect()
    }

    /// A backend holding `snapshot` until its states are registered.
    pub fn restored(snapshot: OperatorSnapshot) -> OperatorStateBackend {
        OperatorStateBackend {
            pending: snapshot,
            ..OperatorStateBackend::default()
        }
    }

    /// Whether restored list state `name` waits for its registration.
    pub(crate) fn has_pending_list(&self, name: &str) -> bool {
        self.pending.lists.iter().any(|l| l.name == name)
    }

    /// Registers (or finds) a list state.
    pub fn list_state<T: StateValue>(
        &mut self,
        name: &str,
        mode: Redistribution,
    ) -> Result<OperatorListState<T>> {
        let what = format!("{mode:?} list of {}", std::any::type_name::<T>());
        if let Some(id) = self.lists.iter().position(|l| l.name() == name) {
            let l = &self.lists[id];
            if l.mode() != mode || l.elem_type() != TypeId::of::<T>() {
                return Err(mismatch(name, &what));
            }
            return Ok(OperatorListState {
                id,
                _t: PhantomData,
            });
        }
        if self.maps.iter().any(|m| m.name() == name) {
            return Err(mismatch(name, &what));
        }
        let mut items = Vec::new();
        // The restored entry is checked and decoded in place and removed only once that has
        // worked: a failed registration leaves it pending, so later snapshots still carry it.
        if let Some(i) = self.pending.lists.iter().position(|l| l.name == name) {
            let snap = &self.pending.lists[i];
            if snap.mode != mode {
                return Err(mismatch(name, &what));
            }
            items.reserve(snap.items.len());
            for b in &snap.items {
                items.push(codec::decode::<T>(b, "operator list state").map_err(|e| {
                    Error::StateCorrupt {
                        key_group: None,
                        reason: format!("list state '{name}': {e}"),
                    }
                })?);
            }
            self.pending.lists.remove(i);
        }
        self.lists.push(Box::new(List {
            name: name.to_string(),
            mode,
            items,
        }));
        Ok(OperatorListState {
            id: self.lists.len() - 1,
            _t: PhantomData,
        })
    }

    /// Registers (or finds) a broadcast map state.
    pub fn broadcast_state<K: MapKey, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<BroadcastState<K, V>> {
        let what = format!(
            "broadcast map of {} to {}",
            std::any::type_name::<K>(),
            std::any::type_name::<V>()
        );
        if let Some(id) = self.maps.iter().position(|m| m.name() == name) {
            if self.maps[id].types() != (TypeId::of::<K>(), TypeId::of::<V>()) {
                return Err(mismatch(name, &what));
            }
            return Ok(BroadcastState {
                id,
                _t: PhantomData,
            });
        }
        if self.lists.iter().any(|l| l.name() == name) {
            return Err(mismatch(name, &what));
        }
        let mut map = HashMap::new();
        // As for lists: decode in place, remove the pending entry only once that has worked.
        if let Some(i) = self.pending.broadcast.iter().position(|m| m.name == name) {
            let snap = &self.pending.broadcast[i];
            for (k, v) in &snap.entries {
                let corrupt = |e: Error| Error::StateCorrupt {
                    key_group: None,
                    reason: format!("broadcast state '{name}': {e}"),
                };
                let k: K = codec::decode(k, "broadcast state key").map_err(corrupt)?;
                let v: V = codec::decode(v, "broadcast state value").map_err(corrupt)?;
                map.insert(k, v);
            }
            self.pending.broadcast.remove(i);
        }
        self.maps.push(Box::new(BMap {
            name: name.to_string(),
            map,
        }));
        Ok(BroadcastState {
            id: self.maps.len() - 1,
            _t: PhantomData,
        })
    }

    fn list<T: StateValue>(&self, id: usize) -> Result<&List<T>> {
        self.lists
            .get(id)
            .and_then(|l| l.as_any().downcast_ref::<List<T>>())
            .ok_or_else(|| {
                Error::Config("operator state handle does not belong to this backend".into())
            })
    }

    fn list_mut<T: StateValue>(&mut self, id: usize) -> Result<&mut List<T>> {
        self.lists
            .get_mut(id)
            .and_then(|l| l.as_any_mut().downcast_mut::<List<T>>())
            .ok_or_else(|| {
                Error::Config("operator state handle does not belong to this backend".into())
            })
    }

    fn map<K: MapKey, V: StateValue>(&self, id: usize) -> Result<&BMap<K, V>> {
        self.maps
            .get(id)
            .and_then(|m| m.as_any().downcast_ref::<BMap<K, V>>())
            .ok_or_else(|| {
                Error::Config("operator state handle does not belong to this backend".into())
            })
    }

    fn map_mut<K: MapKey, V: StateValue>(&mut self, id: usize) -> Result<&mut BMap<K, V>> {
        self.maps
            .get_mut(id)
            .and_then(|m| m.as_any_mut().downcast_mut::<BMap<K, V>>())
            .ok_or_else(|| {
                Error::Config("operator state handle does not belong to this backend".into())
            })
    }

    /// Encodes every state (and any restored state not registered yet, so nothing is lost).
    pub fn snapshot(&self) -> Result<OperatorSnapshot> {
        let mut snap = OperatorSnapshot {
            lists: self
                .lists
                .iter()
                .map(|l| l.encode())
                .collect::<Result<_>>()?,
            broadcast: self
                .maps
                .iter()
                .map(|m| m.encode())
                .collect::<Result<_>>()?,
        };
        snap.lists.extend(self.pending.lists.iter().cloned());
        snap.broadcast
            .extend(self.pending.broadcast.iter().cloned());
        snap.lists.sort_by(|a, b| a.name.cmp(&b.name));
        snap.broadcast.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snap)
    }
}

impl<T: StateValue> OperatorListState<T> {
    /// The task's elements.
    pub fn get<'a>(&self, b: &'a OperatorStateBackend) -> Result<&'a [T]> {
        Ok(&b.list::<T>(self.id)?.items)
    }

    /// Appends an element.
    pub fn add(&self, b: &mut OperatorStateBackend, value: T) -> Result<()> {
        b.list_mut::<T>(self.id)?.items.push(value);
        Ok(())
    }

    /// Replaces the task's elements.
    pub fn update(&self, b: &mut OperatorStateBackend, values: Vec<T>) -> Result<()> {
        b.list_mut::<T>(self.id)?.items = values;
        Ok(())
    }

    /// Removes and returns the task's elements.
    pub fn clear(&self, b: &mut OperatorStateBackend) -> Result<Vec<T>> {
        Ok(std::mem::take(&mut b.list_mut::<T>(self.id)?.items))
    }
}

impl<K: MapKey, V: StateValue> BroadcastState<K, V> {
    /// The value under `key`.
    pub fn get<'a>(&self, b: &'a OperatorStateBackend, key: &K) -> Result<Option<&'a V>> {
        Ok(b.map::<K, V>(self.id)?.map.get(key))
    }

    /// Puts a value, returning the one it replaces. Every task must apply the same puts (from
    /// a broadcast input) for the state to stay the same on every task.
    pub fn put(&self, b: &mut OperatorStateBackend, key: K, value: V) -> Result<Option<V>> {
        Ok(b.map_mut::<K, V>(self.id)?.map.insert(key, value))
    }

    /// Removes a key.
    pub fn remove(&self, b: &mut OperatorStateBackend, key: &K) -> Result<Option<V>> {
        Ok(b.map_mut::<K, V>(self.id)?.map.remove(key))
    }

    /// The entries, in no particular order.
    pub fn entries<'a>(
        &self,
        b: &'a OperatorStateBackend,
    ) -> Result<impl Iterator<Item = (&'a K, &'a V)> + 'a> {
        Ok(b.map::<K, V>(self.id)?.map.iter())
    }
}
