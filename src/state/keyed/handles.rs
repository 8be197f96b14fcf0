//! Typed handles to keyed state ([`ValueState`], [`ListState`], [`MapState`],
//! [`ReducingState`], [`AggregatingState`] and the [`Aggregator`] it folds with): their
//! registration on a backend, the lookup of a handle's table and of the current key's slot,
//! and their operations on that slot.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::backend::KeyedStateBackend;
use super::kinds::{StateKey, StateKind};
use super::map::StateMap;
use super::table::Table;
use crate::error::{Error, Result};
use crate::state::value::{MapKey, StateValue};

/// Folds inputs into an accumulator; the logic of an [`AggregatingState`].
pub trait Aggregator: Send + Sync + 'static {
    /// What is added.
    type In;
    /// What is stored per key.
    type Acc: StateValue;
    /// What is read.
    type Out;
    /// A fresh accumulator, for a key that has none.
    fn create_accumulator(&self) -> Self::Acc;
    /// Folds `value` into `acc`.
    fn add(&self, acc: &mut Self::Acc, value: Self::In);
    /// The result for an accumulator.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// A typed handle to a state registered on one backend. Handles are cheap to copy around
/// and only work on the backend that made them.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident<$($p:ident),*> $(, $extra:ident: $ty:ty)?) => {
        $(#[$doc])*
        pub struct $name<$($p),*> {
            backend: u64,
            id: usize,
            $($extra: $ty,)?
            _types: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                $name { backend: self.backend, id: self.id, $($extra: self.$extra.clone(),)? _types: PhantomData }
            }
        }
        impl<$($p),*> fmt::Debug for $name<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("id", &self.id).finish()
            }
        }
    };
}

handle!(
    /// A handle to a value state: one `V` per key.
    ValueState<V>
);
handle!(
    /// A handle to a list state: a `Vec<V>` per key.
    ListState<V>
);
handle!(
    /// A handle to a map state: a `HashMap<UK, UV>` per key.
    MapState<UK, UV>
);
handle!(
    /// A handle to a reducing state: one `V` per key, folded in place by a reduce function.
    ReducingState<V>, reduce: Arc<dyn Fn(&mut V, V) + Send + Sync>
);
handle!(
    /// A handle to an aggregating state: an accumulator per key, fed by an [`Aggregator`].
    AggregatingState<A>, agg: Arc<A>
);

impl<K: StateKey> KeyedStateBackend<K> {
    /// Registers (or finds) a value state named `name`.
    pub fn value_state<V: StateValue>(&mut self, name: &str) -> Result<ValueState<V>> {
        let id = self.register::<V, V>(name, StateKind::Value, |v| Some(v))?;
        Ok(ValueState {
            backend: self.id,
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or finds) a list state named `name`.
    pub fn list_state<V: StateValue>(&mut self, name: &str) -> Result<ListState<V>> {
        let id = self.register::<Vec<V>, V>(name, StateKind::List, |l| l.first())?;
        Ok(ListState {
            backend: self.id,
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or finds) a map state named `name`.
    pub fn map_state<UK: MapKey, UV: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<MapState<UK, UV>> {
        let id =
            self.register::<HashMap<UK, UV>, UV>(name, StateKind::Map, |m| m.values().next())?;
        Ok(MapState {
            backend: self.id,
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or finds) a reducing state named `name`; `reduce(acc, value)` folds a new
    /// value into the stored one in place.
    pub fn reducing_state<V: StateValue>(
        &mut self,
        name: &str,
        reduce: impl Fn(&mut V, V) + Send + Sync + 'static,
    ) -> Result<ReducingState<V>> {
        let id = self.register::<V, V>(name, StateKind::Reducing, |v| Some(v))?;
        Ok(ReducingState {
            backend: self.id,
            id,
            reduce: Arc::new(reduce),
            _types: PhantomData,
        })
    }

    /// Registers (or finds) an aggregating state named `name` driven by `agg`.
    pub fn aggregating_state<A: Aggregator>(
        &mut self,
        name: &str,
        agg: A,
    ) -> Result<AggregatingState<A>> {
        let id = self.register::<A::Acc, A::Acc>(name, StateKind::Aggregating, |v| Some(v))?;
        Ok(AggregatingState {
            backend: self.id,
            id,
            agg: Arc::new(agg),
            _types: PhantomData,
        })
    }

    #[inline]
    fn check_handle(&self, backend: u64, id: usize) -> Result<()> {
        if backend != self.id || id >= self.tables.len() {
            return Err(Error::Config(
                "a state handle was used on a backend other than the one that registered it".into(),
            ));
        }
        Ok(())
    }

    /// The whole table of a handle, every owned key group of it.
    #[inline]
    fn table<T: StateValue>(&self, backend: u64, id: usize) -> Result<&Table<K, T>> {
        self.check_handle(backend, id)?;
        self.tables[id]
            .as_any()
            .downcast_ref::<Table<K, T>>()
            .ok_or_else(|| Error::Config("state handle type does not match its state".into()))
    }

    #[inline]
    fn slot<T: StateValue>(&self, backend: u64, id: usize) -> Result<(&StateMap<K, T>, &K)> {
        let table = self.table::<T>(backend, id)?;
        let cur = self.current.as_ref().ok_or_else(|| Error::NoCurrentKey {
            name: table.name.clone(),
        })?;
        Ok((&*table.groups[cur.gi], &cur.key))
    }

    #[inline]
    fn slot_mut<T: StateValue>(
        &mut self,
        backend: u64,
        id: usize,
    ) -> Result<(&mut StateMap<K, T>, &K)> {
        self.check_handle(backend, id)?;
        let table = self.tables[id]
            .as_any_mut()
            .downcast_mut::<Table<K, T>>()
            .ok_or_else(|| Error::Config("state handle type does not match its state".into()))?;
        let cur = self.current.as_ref().ok_or_else(|| Error::NoCurrentKey {
            name: table.name.clone(),
        })?;
        Ok((table.group_mut(cur.gi), &cur.key))
    }
}

impl<V: StateValue> ValueState<V> {
    /// The current key's value.
    pub fn get<'a, K: StateKey>(&self, b: &'a KeyedStateBackend<K>) -> Result<Option<&'a V>> {
        let (slot, key) = b.slot::<V>(self.backend, self.id)?;
        Ok(slot.get(key))
    }

    /// The current key's value, mutably.
    pub fn get_mut<'a, K: StateKey>(
        &self,
        b: &'a mut KeyedStateBackend<K>,
    ) -> Result<Option<&'a mut V>> {
        let (slot, key) = b.slot_mut::<V>(self.backend, self.id)?;
        Ok(slot.get_mut(key))
    }

    /// The current key's value, inserting `init()` first if there is none.
    pub fn get_or_insert_with<'a, K: StateKey>(
        &self,
        b: &'a mut KeyedStateBackend<K>,
        init: impl FnOnce() -> V,
    ) -> Result<&'a mut V> {
        let (slot, key) = b.slot_mut::<V>(self.backend, self.id)?;
        // A key that owns nothing (integers, tuples of them) clones for free, so one `entry`
        // lookup is cheapest; a key that may own heap memory (a `String`) is cloned only when
        // it is inserted, at the price of a second lookup.
        if !std::mem::needs_drop::<K>() {
            return Ok(slot.entry(key.clone()).or_insert_with(init));
        }
        if !slot.contains_key(key) {
            slot.insert(key.clone(), init());
        }
        slot.get_mut(key)
            .ok_or_else(|| Error::Config("value vanished after insert".into()))
    }

    /// Sets the current key's value.
    pub fn set<K: StateKey>(&self, b: &mut KeyedStateBackend<K>, value: V) -> Result<()> {
        let (slot, key) = b.slot_mut::<V>(self.backend, self.id)?;
        slot.insert(key.clone(), value);
        Ok(())
    }

    /// Removes and returns the current key's value.
    pub fn clear<K: StateKey>(&self, b: &mut KeyedStateBackend<K>) -> Result<Option<V>> {
        let (slot, key) = b.slot_mut::<V>(self.backend, self.id)?;
        Ok(slot.remove(key))
    }

    /// Every key that has a value, with its value, over all the key groups the backend owns.
    /// Needs no current key and does not change it. The order is unspecified (it is neither
    /// key order nor stable across snapshots and restores).
    pub fn entries<'a, K: StateKey>(
        &self,
        b: &'a KeyedStateBackend<K>,
    ) -> Result<impl Iterator<Item = (&'a K, &'a V)> + 'a> {
        let table = b.table::<V>(self.backend, self.id)?;
        Ok(table.groups.iter().flat_map(|g| g.iter()))
    }

    /// Every key that has a value, over all the key groups the backend owns. Needs no current
    /// key. The order is unspecified.
    pub fn keys<'a, K: StateKey>(
        &self,
        b: &'a KeyedStateBackend<K>,
    ) -> Result<impl Iterator<Item = &'a K> + 'a> {
        let table = b.table::<V>(self.backend, self.id)?;
        Ok(table.groups.iter().flat_map(|g| g.keys()))
    }
}

impl<V: StateValue> ListState<V> {
    /// The current key's list (empty if it has none).
    pub fn get<'a, K: StateKey>(&self, b: &'a KeyedStateBackend<K>) -> Result<&'a [V]> {
        let (slot, key) = b.slot::<Vec<V>>(self.backend, self.id)?;
        Ok(slot.get(key).map(|v| v.as_slice()).unwrap_or(&[]))
    }

    /// Appends to the current key's list.
    pub fn add<K: StateKey>(&self, b: &mut KeyedStateBackend<K>, value: V) -> Result<()> {
        let (slot, key) = b.slot_mut::<Vec<V>>(self.backend, self.id)?;
        match slot.get_mut(key) {
            Some(list) => list.push(value),
            None => {
                slot.insert(key.clone(), vec![value]);
            }
        }
        Ok(())
    }

    /// Replaces the current key's list (an empty list removes the key).
    pub fn update<K: StateKey>(&self, b: &mut KeyedStateBackend<K>, values: Vec<V>) -> Result<()> {
        let (slot, key) = b.slot_mut::<Vec<V>>(self.backend, self.id)?;
        if values.is_empty() {
            slot.remove(key);
        } else {
            slot.insert(key.clone(), values);
        }
        Ok(())
    }

    /// Removes and returns the current key's list.
    pub fn clear<K: StateKey>(&self, b: &mut KeyedStateBackend<K>) -> Result<Vec<V>> {
        let (slot, key) = b.slot_mut::<Vec<V>>(self.backend, self.id)?;
        Ok(slot.remove(key).unwrap_or_default())
    }

    /// Every key that has a list, with its list, over all the key groups the backend owns.
    /// Needs no current key and does not change it. The order of the keys is unspecified (each
    /// list keeps its own order).
    pub fn entries<'a, K: StateKey>(
        &self,
        b: &'a KeyedStateBackend<K>,
    ) -> Result<impl Iterator<Item = (&'a K, &'a [V])> + 'a> {
        let table = b.table::<Vec<V>>(self.backend, self.id)?;
        Ok(table
            .groups
            .iter()
            .flat_map(|g| g.iter().map(|(k, list)| (k, list.as_slice()))))
    }
}

impl<UK: MapKey, UV: StateValue> MapState<UK, UV> {
    /// The value under `user_key` in the current key's map.
    pub fn get<'a, K: StateKey>(
        &self,
        b: &'a KeyedStateBackend<K>,
        user_key: &UK,
    ) -> Result<Option<&'a UV>> {
        let (slot, key) = b.slot::<HashMap<UK, UV>>(self.backend, self.id)?;
        Ok(slot.get(key).and_then(|m| m.get(user_key)))
    }

    /// Puts a value in the current key's map, returning the one it replaces.
    pub fn put<K: StateKey>(
        &self,
        b: &mut KeyedStateBackend<K>,
        user_key: UK,
        value: UV,
    ) -> Result<Option<UV>> {
        let (slot, key) = b.slot_mut::<HashMap<UK, UV>>(self.backend, self.id)?;
        match slot.get_mut(key) {
            Some(m) => Ok(m.insert(user_key, value)),
            None => {
                slot.insert(key.clone(), HashMap::from([(user_key, value)]));
                Ok(None)
            }
        }
    }

    /// Removes a user key from the current key's map (an emptied map removes the key).
    pub fn remove<K: StateKey>(
        &self,
        b: &mut KeyedStateBackend<K>,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let (slot, key) = b.slot_mut::<HashMap<UK, UV>>(self.backend, self.id)?;
        let Some(m) = slot.get_mut(key) else {
            return Ok(None);
        };
        let old = m.remove(user_key);
        if m.is_empty() {
            slot.remove(key);
        }
        Ok(old)
    }

    /// The entries of the current key's map, in no particular order.
    pub fn entries<'a, K: StateKey>(
        &self,
        b: &'a KeyedStateBackend<K>,
    ) -> Result<impl Iterator<Item = (&'a UK, &'a UV)> + 'a> {
        let (slot, key) = b.slot::<HashMap<UK, UV>>(self.backend, self.id)?;
        Ok(slot.get(key).into_iter().flat_map(|m| m.iter()))
    }

    /// Removes the current key's whole map.
    pub fn clear<K: StateKey>(&self, b: &mut KeyedStateBackend<K>) -> Result<()> {
        let (slot, key) = b.slot_mut::<HashMap<UK, UV>>(self.backend, self.id)?;
        slot.remove(key);
        Ok(())
    }
}

impl<V: StateValue> ReducingState<V> {
    /// Folds `value` into the current key's value (or stores it, for a key with none).
    pub fn add<K: StateKey>(&self, b: &mut KeyedStateBackend<K>, value: V) -> Result<()> {
        let (slot, key) = b.slot_mut::<V>(self.backend, self.id)?;
        match slot.get_mut(key) {
            Some(acc) => (self.reduce)(acc, value),
            None => {
                slot.insert(key.clone(), value);
            }
        }
        Ok(())
    }

    /// The current key's folded value.
    pub fn get<'a, K: StateKey>(&self, b: &'a KeyedStateBackend<K>) -> Result<Option<&'a V>> {
        let (slot, key) = b.slot::<V>(self.backend, self.id)?;
        Ok(slot.get(key))
    }

    /// Removes and returns the current key's folded value.
    pub fn clear<K: StateKey>(&self, b: &mut KeyedStateBackend<K>) -> Result<Option<V>> {
        let (slot, key) = b.slot_mut::<V>(self.backend, self.id)?;
        Ok(slot.remove(key))
    }
}

impl<A: Aggregator> AggregatingState<A> {
    /// Adds `value` to the current key's accumulator (created first if the key has none).
    pub fn add<K: StateKey>(&self, b: &mut KeyedStateBackend<K>, value: A::In) -> Result<()> {
        let (slot, key) = b.slot_mut::<A::Acc>(self.backend, self.id)?;
        match slot.get_mut(key) {
            Some(acc) => self.agg.add(acc, value),
            None => {
                let mut acc = self.agg.create_accumulator();
                self.agg.add(&mut acc, value);
                slot.insert(key.clone(), acc);
            }
        }
        Ok(())
    }

    /// The current key's result, if it has an accumulator.
    pub fn get<K: StateKey>(&self, b: &KeyedStateBackend<K>) -> Result<Option<A::Out>> {
        let (slot, key) = b.slot::<A::Acc>(self.backend, self.id)?;
        Ok(slot.get(key).map(|acc| self.agg.result(acc)))
    }

    /// Removes the current key's accumulator.
    pub fn clear<K: StateKey>(&self, b: &mut KeyedStateBackend<K>) -> Result<()> {
        let (slot, key) = b.slot_mut::<A::Acc>(self.backend, self.id)?;
        slot.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::key_group::{key_group_for, KeyGroupRange};

    fn backend(range: KeyGroupRange) -> KeyedStateBackend<String> {
        KeyedStateBackend::new(range, 128).expect("backend")
    }

    #[test]
    fn every_state_kind_is_scoped_to_the_current_key() {
        let mut b = backend(KeyGroupRange::all(128).expect("range"));
        let v = b.value_state::<u64>("v").expect("v");
        let l = b.list_state::<u32>("l").expect("l");
        let m = b.map_state::<String, i64>("m").expect("m");
        let r = b.reducing_state::<u64>("r", |acc, x| *acc += x).expect("r");
        struct Avg;
        impl Aggregator for Avg {
            type In = u64;
            type Acc = (u64, u64);
            type Out = f64;
            fn create_accumulator(&self) -> (u64, u64) {
                (0, 0)
            }
            fn add(&self, acc: &mut (u64, u64), x: u64) {
                acc.0 += x;
                acc.1 += 1;
            }
            fn result(&self, acc: &(u64, u64)) -> f64 {
                acc.0 as f64 / acc.1 as f64
            }
        }
        let a = b.aggregating_state("a", Avg).expect("a");
        b.set_current_key("x".into()).expect("key");
        v.set(&mut b, 5).expect("set");
        l.add(&mut b, 1).expect("add");
        l.add(&mut b, 2).expect("add");
        m.put(&mut b, "k".into(), -1).expect("put");
        r.add(&mut b, 3).expect("r");
        r.add(&mut b, 4).expect("r");
        a.add(&mut b, 2).expect("a");
        a.add(&mut b, 4).expect("a");
        b.set_current_key("y".into()).expect("key");
        assert_eq!(v.get(&b).expect("get"), None);
        assert!(l.get(&b).expect("get").is_empty());
        assert_eq!(m.get(&b, &"k".into()).expect("get"), None);
        b.set_current_key("x".into()).expect("key");
        assert_eq!(v.get(&b).expect("get"), Some(&5));
        assert_eq!(l.get(&b).expect("get"), &[1, 2]);
        assert_eq!(m.get(&b, &"k".into()).expect("get"), Some(&-1));
        assert_eq!(r.get(&b).expect("get"), Some(&7));
        assert_eq!(a.get(&b).expect("get"), Some(3.0));
    }

    #[test]
    fn registering_a_name_again_with_another_type_is_refused() {
        let mut b = backend(KeyGroupRange::all(128).expect("range"));
        b.value_state::<u64>("s").expect("first");
        b.value_state::<u64>("s").expect("same type again is fine");
        assert!(matches!(
            b.value_state::<String>("s"),
            Err(Error::StateTypeMismatch { .. })
        ));
        assert!(matches!(
            b.list_state::<u64>("s"),
            Err(Error::StateTypeMismatch { .. })
        ));
    }

    #[test]
    fn access_without_a_current_key_or_with_a_foreign_key_is_an_error() {
        let range = KeyGroupRange::for_task(0, 2, 128).expect("range");
        let mut b = backend(range);
        let v = b.value_state::<u64>("v").expect("v");
        assert!(matches!(v.get(&b), Err(Error::NoCurrentKey { .. })));
        let foreign = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| !range.contains(key_group_for(k, 128)))
            .expect("some key lands in the other half");
        assert!(matches!(
            b.set_current_key(foreign),
            Err(Error::KeyGroupNotOwned { .. })
        ));
        let mut other = backend(range);
        let _ = other.value_state::<u64>("v").expect("v");
        assert!(
            v.get(&other).is_err(),
            "a handle of another backend is refused"
        );
    }
}
