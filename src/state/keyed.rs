//! Keyed state: per (state name, key) values, stored by key group, reached through typed
//! handles scoped to the backend's current key.
//!
//! A [`KeyedStateBackend`] belongs to one task and covers the task's [`KeyGroupRange`]. The
//! task (the runtime, for an operator) sets the current key before user code runs; every
//! handle then reads and writes the slot of that key. A key outside the task's range is
//! refused ([`Error::KeyGroupNotOwned`]): it would mean records were routed to the wrong task.
//!
//! Snapshots: [`KeyedStateBackend::capture`] shares the tables' key groups with the capture
//! (copy-on-write: O(key groups) on the task, and a group is copied by the first write that
//! finds it shared), so the task goes on processing at once; [`KeyedStateCapture::encode`] turns the clone into one checksummed
//! MessagePack blob per non-empty key group and can run on a background thread.
//! [`KeyedStateBackend::restore`] takes the blobs of the groups the task owns from any number
//! of snapshots (so a task can be restored at another parallelism), refuses snapshots whose
//! ranges do not together cover every owned group exactly once (state would silently vanish),
//! verifies each blob's checksum and each key's group, and keeps the bytes of states that are
//! not registered yet until they are (so lazily registered state is neither lost nor needed up
//! front).

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::key_group::{key_group_for, KeyGroup, KeyGroupRange, StableHash};
use super::value::{MapKey, StateValue};
use super::OperatorSnapshot;
use crate::codec;
use crate::error::{Error, Result};

/// A type usable as a key of keyed state: hashed stably to find its key group, and stored.
pub trait StateKey:
    StableHash + Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T> StateKey for T where
    T: StableHash + Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

/// The kinds of keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per key.
    Value,
    /// A list of values per key.
    List,
    /// A map per key.
    Map,
    /// One value per key, folded from every added value by a reduce function.
    Reducing,
    /// An accumulator per key, fed by an [`Aggregator`].
    Aggregating,
}

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

/// One state's entries of one key group, as stored in a key group blob.
#[derive(Debug, Serialize, Deserialize)]
struct GroupEntry {
    name: String,
    kind: StateKind,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// A [`GroupEntry`] borrowing its parts: encodes to the same bytes.
#[derive(Serialize)]
struct GroupEntryRef<'a> {
    name: &'a str,
    kind: StateKind,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

/// The state of one key group: a checksummed MessagePack blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupBlob {
    /// The key group.
    pub key_group: KeyGroup,
    /// CRC32C of `bytes`.
    pub crc32c: u32,
    /// The encoded entries of every state in this group.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The keyed state of one task, as bytes per key group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedSnapshot {
    /// The number of key groups of the vertex (key groups mean nothing without it).
    pub max_parallelism: u32,
    /// The range of the task that took the snapshot. A restore counts every group of it as
    /// covered by this snapshot, including the empty ones that have no blob.
    pub range: KeyGroupRange,
    /// One blob per non-empty key group, in key group order.
    pub groups: Vec<KeyGroupBlob>,
}

impl KeyedSnapshot {
    /// The total size of the blobs in bytes.
    pub fn size_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.bytes.len()).sum()
    }
}

/// What a restore took in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Key groups restored.
    pub key_groups: usize,
    /// Blobs skipped because their group belongs to another task.
    pub skipped_key_groups: usize,
}

trait ErasedTable<K>: Send {
    fn kind(&self) -> StateKind;
    fn value_type(&self) -> (TypeId, &'static str);
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Decodes one group's entries; checks each key's group when `check_keys` holds the
    /// max parallelism (restore has already checked them when it is `None`).
    fn restore_group(
        &mut self,
        gi: usize,
        kg: KeyGroup,
        bytes: &[u8],
        check_keys: Option<u32>,
    ) -> Result<()>;
    fn clear(&mut self);
    /// Shares every group with a new capture: O(groups), whatever the entries. Replaces the
    /// table's link to any earlier capture.
    fn capture(&mut self, deferred: &Arc<DeferredStats>) -> Box<dyn CapturedGroups>;
    fn entries(&self) -> usize;
}

struct Table<K, T> {
    name: String,
    kind: StateKind,
    /// Copy-on-write: a capture shares the groups. Before the first write to a group still
    /// shared with the newest capture, the task encodes the group for it ([`Table::settle`]);
    /// a write that still finds the group shared (an older capture, or one encoding the group
    /// right now) copies it.
    groups: Vec<Arc<StateMap<K, T>>>,
    /// The newest capture's share of the groups; dangling once that capture is dropped.
    capture: Weak<CaptureSlots<K, T>>,
    /// The groups the newest capture took while non-empty and the task has not written since.
    captured: Vec<bool>,
    /// Buffers for the encoded groups of the next capture.
    pool: BufferPool,
}

impl<K: StateKey, T: StateValue> Table<K, T> {
    /// Called before writing group `gi` when the table does not hold it alone: if the newest
    /// capture still waits to encode the group, encodes it now, on this thread, and lets the
    /// capture drop its share, so that the write that follows needs no copy. Keeps the cost of
    /// a checkpoint to one encoding of the state, done by the task group by group as it first
    /// writes them (each pause is one group's encoding), instead of a copy of every written
    /// group plus an encoding on another thread.
    #[cold]
    #[inline(never)]
    fn settle(&mut self, gi: usize) {
        self.captured[gi] = false;
        if let Some(capture) = self.capture.upgrade() {
            capture.encode_group(gi, true);
        }
    }

    /// Group `gi`, to be written: settled first if the newest capture may still hold it (a
    /// flag, so that the common write costs no more than `Arc::make_mut`), copied if another
    /// capture still holds it.
    #[inline(always)]
    fn group_mut(&mut self, gi: usize) -> &mut StateMap<K, T> {
        if self.captured[gi] {
            self.settle(gi);
        }
        Arc::make_mut(&mut self.groups[gi])
    }

    fn merge(&mut self, gi: usize, map: StateMap<K, T>) {
        let slot = self.group_mut(gi);
        if slot.is_empty() {
            *slot = map;
        } else {
            slot.extend(map);
        }
    }
}

/// Checks, without knowing the value type, that every key of an encoded `HashMap<K, _>`
/// belongs to key group `kg`.
fn check_keys<K: StateKey>(bytes: &[u8], kg: KeyGroup, max_p: u32, name: &str) -> Result<()> {
    use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};
    struct Keys<K> {
        kg: KeyGroup,
        max_p: u32,
        _k: PhantomData<K>,
    }
    impl<'de, K: StateKey> Visitor<'de> for Keys<K> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of keyed state")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            while let Some(k) = map.next_key::<K>()? {
                map.next_value::<IgnoredAny>()?;
                let g = key_group_for(&k, self.max_p);
                if g != self.kg {
                    return Err(A::Error::custom(format!(
                        "holds a key of key group {g} in the blob of group {}",
                        self.kg
                    )));
                }
            }
            Ok(())
        }
    }
    let mut input = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut input);
    let visited = de.deserialize_map(Keys::<K> {
        kg,
        max_p,
        _k: PhantomData,
    });
    let rest = de.into_inner().len();
    match visited {
        Ok(()) if rest == 0 => Ok(()),
        Ok(()) => Err(Error::StateCorrupt {
            key_group: Some(kg),
            reason: format!("state '{name}': {rest} trailing bytes"),
        }),
        Err(e) => Err(Error::StateCorrupt {
            key_group: Some(kg),
            reason: format!("state '{name}': {e}"),
        }),
    }
}

impl<K: StateKey, T: StateValue> ErasedTable<K> for Table<K, T> {
    fn kind(&self) -> StateKind {
        self.kind
    }
    fn value_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<T>(), std::any::type_name::<T>())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn restore_group(
        &mut self,
        gi: usize,
        kg: KeyGroup,
        bytes: &[u8],
        check_keys: Option<u32>,
    ) -> Result<()> {
        let map: StateMap<K, T> =
            codec::decode(bytes, "keyed state").map_err(|e| Error::StateCorrupt {
                key_group: Some(kg),
                reason: format!("state '{}': {e}", self.name),
            })?;
        let Some(max_p) = check_keys else {
            self.merge(gi, map);
            return Ok(());
        };
        if let Some(stray) = map.keys().find(|k| key_group_for(*k, max_p) != kg) {
            return Err(Error::StateCorrupt {
                key_group: Some(kg),
                reason: format!(
                    "state '{}' holds a key of key group {} in the blob of group {kg}",
                    self.name,
                    key_group_for(stray, max_p)
                ),
            });
        }
        self.merge(gi, map);
        Ok(())
    }
    fn clear(&mut self) {
        for g in &mut self.groups {
            *g = Arc::new(StateMap::default());
        }
    }
    fn capture(&mut self, deferred: &Arc<DeferredStats>) -> Box<dyn CapturedGroups> {
        let slots = Arc::new(CaptureSlots {
            slots: self
                .groups
                .iter()
                .map(|g| {
                    let cell = SlotCell {
                        pending: Mutex::new(None),
                        encoded: OnceLock::new(),
                    };
                    if g.is_empty() {
                        let _ = cell.encoded.set(Ok(Vec::new()));
                    } else {
                        *lock(&cell.pending) = Some(Arc::clone(g));
                    }
                    cell
                })
                .collect(),
            deferred: Arc::clone(deferred),
            pool: Arc::clone(&self.pool),
        });
        self.capture = Arc::downgrade(&slots);
        for (flag, g) in self.captured.iter_mut().zip(&self.groups) {
            *flag = !g.is_empty();
        }
        Box::new(CapturedTable {
            name: self.name.clone(),
            kind: self.kind,
            slots,
        })
    }
    fn entries(&self) -> usize {
        self.groups.iter().map(|g| g.len()).sum()
    }
}

/// A captured key group of one state: the capture's share of the group until it is encoded,
/// then its bytes, set once.
struct SlotCell<K, T> {
    /// The group as captured; taken (and the share dropped) by the encoding.
    pending: Mutex<Option<Arc<StateMap<K, T>>>>,
    /// The group's entries, encoded (empty for an empty group); or why the state's own
    /// serialization failed. Set under `pending`'s lock, so a group is encoded once.
    encoded: OnceLock<std::result::Result<Vec<u8>, String>>,
}

/// Byte buffers of encoded groups, handed back by dropped captures for the next one (so
/// the encoding of every checkpoint does not fault in fresh pages).
type BufferPool = Arc<Mutex<Vec<Vec<u8>>>>;

/// One capture's share of one state's key groups, reached by the capture (on the thread that
/// encodes it) and by the table (on the task, through a weak link).
struct CaptureSlots<K, T> {
    slots: Vec<SlotCell<K, T>>,
    deferred: Arc<DeferredStats>,
    pool: BufferPool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic while it was held; the data is still consistent
    // (every update is a single assignment).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: StateKey, T: StateValue> CaptureSlots<K, T> {
    /// The bytes of group `gi`, encoding it first if it is still pending (and dropping the
    /// capture's share of it). `on_task` counts the time in the capture's
    /// [`DeferredEncoding`].
    fn encode_group(&self, gi: usize, on_task: bool) -> &std::result::Result<Vec<u8>, String> {
        let cell = &self.slots[gi];
        if let Some(done) = cell.encoded.get() {
            return done;
        }
        let mut pending = lock(&cell.pending);
        if let Some(map) = pending.take() {
            let started = on_task.then(Instant::now);
            let mut bytes = lock(&self.pool).pop().unwrap_or_default();
            let result = match crate::codec::msgpack::write(&*map, &mut bytes) {
                Ok(()) => Ok(bytes),
                Err(e) => Err(e.to_string()),
            };
            // Cannot fail: only the holder of the lock that took the map sets the cell.
            let _ = cell.encoded.set(result);
            if let Some(t) = started {
                self.deferred.record(t.elapsed());
            }
        }
        drop(pending);
        cell.encoded
            .get()
            .expect("a group is encoded before its map is let go")
    }
}

impl<K, T> Drop for CaptureSlots<K, T> {
    fn drop(&mut self) {
        let mut pool = lock(&self.pool);
        let keep = self.slots.len();
        for cell in &mut self.slots {
            if let Some(Ok(mut bytes)) = cell.encoded.take() {
                if pool.len() < keep && bytes.capacity() > 0 {
                    bytes.clear();
                    pool.push(bytes);
                }
            }
        }
    }
}

/// A state's groups as a capture holds them.
trait CapturedGroups: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> StateKind;
    /// Group `gi`'s entries (a MessagePack map), encoding them first if no one has yet; `None`
    /// when the group is empty.
    fn group_bytes(&self, gi: usize) -> Result<Option<&[u8]>>;
    fn group_is_empty(&self, gi: usize) -> bool;
}

struct CapturedTable<K, T> {
    name: String,
    kind: StateKind,
    slots: Arc<CaptureSlots<K, T>>,
}

impl<K: StateKey, T: StateValue> CapturedGroups for CapturedTable<K, T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> StateKind {
        self.kind
    }
    fn group_bytes(&self, gi: usize) -> Result<Option<&[u8]>> {
        match self.slots.encode_group(gi, false) {
            // Only an empty group encodes to nothing (a map has a header at least).
            Ok(bytes) if bytes.is_empty() => Ok(None),
            Ok(bytes) => Ok(Some(bytes)),
            Err(reason) => Err(Error::encode(
                format!("keyed state '{}'", self.name),
                reason,
            )),
        }
    }
    fn group_is_empty(&self, gi: usize) -> bool {
        // Empty groups are captured already encoded, as nothing.
        matches!(self.slots.slots[gi].encoded.get(), Some(Ok(b)) if b.is_empty())
    }
}

/// How much of a capture's encoding the task did itself ([`Table::settle`]).
#[derive(Debug, Default)]
struct DeferredStats {
    groups: AtomicU64,
    total_nanos: AtomicU64,
    longest_nanos: AtomicU64,
}

impl DeferredStats {
    fn record(&self, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.longest_nanos.fetch_max(nanos, Ordering::Relaxed);
    }
}

/// The part of a capture's encoding that the task did itself, group by group, before writing
/// groups the capture had not encoded yet (see [`KeyedStateBackend::capture`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeferredEncoding {
    /// Key groups (of any state) the task encoded.
    pub groups: u64,
    /// The time the task spent encoding them.
    pub total: std::time::Duration,
    /// The longest single group encoding: the longest pause of the task's processing it caused.
    pub longest: std::time::Duration,
}

struct Current<K> {
    key: K,
    gi: usize,
}

/// Restored bytes of a state nobody has registered yet: (group index, key group, kind, data).
type Pending = Vec<(usize, KeyGroup, StateKind, Vec<u8>)>;

static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

/// A key group's table of one state.
type StateMap<K, T> = HashMap<K, T, StateHashBuilder>;

/// Builds the hasher of keyed state tables: each written word mixed by multiply-rotate and the
/// result passed through the MurmurHash3 finaliser, from a per-process random seed (so an
/// adversary cannot precompute colliding keys for another process). Several times faster than
/// SipHash for the small keys of keyed state; never used for anything stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateHashBuilder {
    seed: u64,
}

impl Default for StateHashBuilder {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5eed);
            h.finish()
        });
        StateHashBuilder { seed }
    }
}

impl std::hash::BuildHasher for StateHashBuilder {
    type Hasher = StateHasher;
    fn build_hasher(&self) -> StateHasher {
        StateHasher { h: self.seed }
    }
}

/// The hasher [`StateHashBuilder`] builds.
#[derive(Debug)]
pub(crate) struct StateHasher {
    h: u64,
}

impl StateHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.h = (self.h ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(31);
    }
}

impl std::hash::Hasher for StateHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let mut k = self.h;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

/// The keyed state of one task. See the module documentation.
pub struct KeyedStateBackend<K: StateKey> {
    id: u64,
    range: KeyGroupRange,
    max_parallelism: u32,
    tables: Vec<Box<dyn ErasedTable<K>>>,
    by_name: HashMap<String, usize>,
    current: Option<Current<K>>,
    pending: HashMap<String, Pending>,
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

    /// The number of (state, key) entries held.
    pub fn entries(&self) -> usize {
        self.tables.iter().map(|t| t.entries()).sum()
    }

    /// Registers (or finds) a value state named `name`.
    pub fn value_state<V: StateValue>(&mut self, name: &str) -> Result<ValueState<V>> {
        let id = self.register::<V>(name, StateKind::Value)?;
        Ok(ValueState {
            backend: self.id,
            id,
            _types: PhantomData,
        })
    }

    /// Registers (or finds) a list state named `name`.
    pub fn list_state<V: StateValue>(&mut self, name: &str) -> Result<ListState<V>> {
        let id = self.register::<Vec<V>>(name, StateKind::List)?;
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
        let id = self.register::<HashMap<UK, UV>>(name, StateKind::Map)?;
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
        let id = self.register::<V>(name, StateKind::Reducing)?;
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
        let id = self.register::<A::Acc>(name, StateKind::Aggregating)?;
        Ok(AggregatingState {
            backend: self.id,
            id,
            agg: Arc::new(agg),
            _types: PhantomData,
        })
    }

    fn register<T: StateValue>(&mut self, name: &str, kind: StateKind) -> Result<usize> {
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
        let mut table: Table<K, T> = Table {
            name: name.to_string(),
            kind,
            groups: (0..self.range.len())
                .map(|_| Arc::new(StateMap::default()))
                .collect(),
            capture: Weak::new(),
            captured: vec![false; self.range.len()],
            pool: BufferPool::default(),
        };
        if let Some(pending) = self.pending.get(name) {
            for (gi, kg, stored_kind, data) in pending {
                if *stored_kind != kind {
                    return Err(Error::StateTypeMismatch {
                        name: name.to_string(),
                        existing: format!("{stored_kind:?} (in the restored snapshot)"),
                        requested: requested(),
                    });
                }
                table.restore_group(*gi, *kg, data, None)?;
            }
            self.pending.remove(name);
        }
        self.tables.push(Box::new(table));
        self.by_name.insert(name.to_string(), self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    fn check_handle(&self, backend: u64, id: usize) -> Result<()> {
        if backend != self.id || id >= self.tables.len() {
            return Err(Error::Config(
                "a state handle was used on a backend other than the one that registered it".into(),
            ));
        }
        Ok(())
    }

    /// The whole table of a handle, every owned key group of it.
    fn table<T: StateValue>(&self, backend: u64, id: usize) -> Result<&Table<K, T>> {
        self.check_handle(backend, id)?;
        self.tables[id]
            .as_any()
            .downcast_ref::<Table<K, T>>()
            .ok_or_else(|| Error::Config("state handle type does not match its state".into()))
    }

    fn slot<T: StateValue>(&self, backend: u64, id: usize) -> Result<(&StateMap<K, T>, &K)> {
        let table = self.table::<T>(backend, id)?;
        let cur = self.current.as_ref().ok_or_else(|| Error::NoCurrentKey {
            name: table.name.clone(),
        })?;
        Ok((&*table.groups[cur.gi], &cur.key))
    }

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

    /// Captures the state so that it can be encoded while the task goes on changing it. The
    /// capture shares the tables' key groups (copy-on-write): it costs O(states x key groups),
    /// whatever the number of entries. Each group is then encoded once, by whichever side
    /// needs it first: the capture's [`encode`](KeyedStateCapture::encode) (on any thread), or
    /// this backend, just before the first write to a group the newest capture has not
    /// encoded yet (so the write needs no copy; the capture's
    /// [`deferred_encoding`](KeyedStateCapture::deferred_encoding) says how much of it the
    /// task did). A write to a group shared with an older capture, or with the encoding in
    /// progress, copies the group.
    pub fn capture(&mut self) -> KeyedStateCapture<K> {
        let deferred = Arc::new(DeferredStats::default());
        KeyedStateCapture {
            range: self.range,
            max_parallelism: self.max_parallelism,
            tables: self
                .tables
                .iter_mut()
                .map(|t| t.capture(&deferred))
                .collect(),
            pending: self.pending.clone(),
            deferred,
            _key: PhantomData,
        }
    }

    /// Captures and encodes in one step, on the calling thread.
    pub fn snapshot(&mut self) -> Result<KeyedSnapshot> {
        self.capture().encode()
    }

    /// Replaces all state with the key groups this backend owns found in `snapshots`. Blobs of
    /// other groups are skipped. The snapshots' ranges (not only their blobs: a snapshot covers
    /// the empty groups of its range too) must together cover every owned key group exactly
    /// once. A group not covered or covered twice, a blob outside its snapshot's range, a
    /// checksum mismatch, a key in the wrong group or a different max parallelism is an error
    /// ([`Error::StateCorrupt`]), and leaves the backend empty.
    pub fn restore<'a>(
        &mut self,
        snapshots: impl IntoIterator<Item = &'a KeyedSnapshot>,
    ) -> Result<RestoreStats> {
        let result = self.restore_inner(snapshots);
        if result.is_err() {
            self.clear();
        }
        result
    }

    /// Drops every entry of every state, and any restored bytes not yet registered.
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            t.clear();
        }
        self.pending.clear();
        self.current = None;
    }

    fn restore_inner<'a>(
        &mut self,
        snapshots: impl IntoIterator<Item = &'a KeyedSnapshot>,
    ) -> Result<RestoreStats> {
        self.clear();
        let mut stats = RestoreStats::default();
        let mut seen = HashSet::new();
        // Which owned key groups some snapshot's range covers (blob or not).
        let mut covered = vec![false; self.range.len()];
        for snap in snapshots {
            self.check_snapshot(snap, &mut covered)?;
            let r = snap.range;
            for blob in &snap.groups {
                let kg = blob.key_group;
                if !r.contains(kg) {
                    return Err(Error::StateCorrupt {
                        key_group: Some(kg),
                        reason: format!("blob outside its snapshot's key-group range {r}"),
                    });
                }
                if !self.range.contains(kg) {
                    stats.skipped_key_groups += 1;
                    continue;
                }
                if !seen.insert(kg) {
                    return Err(Error::StateCorrupt {
                        key_group: Some(kg),
                        reason: "key group has more than one blob in the snapshot".into(),
                    });
                }
                self.restore_blob(blob)?;
                stats.key_groups += 1;
            }
        }
        if let Some(gi) = covered.iter().position(|c| !c) {
            let missing = covered.iter().filter(|c| !**c).count();
            return Err(Error::StateCorrupt {
                key_group: Some(KeyGroup(self.range.start + gi as u16)),
                reason: format!(
                    "no snapshot covers this key group ({missing} of the {} key groups of {} are not covered): restoring would silently drop their state",
                    self.range.len(),
                    self.range
                ),
            });
        }
        Ok(stats)
    }

    /// Checks that `snap` fits this backend (same number of key groups, a range within it)
    /// and marks the owned groups it covers in `covered`, refusing a group covered twice.
    fn check_snapshot(&self, snap: &KeyedSnapshot, covered: &mut [bool]) -> Result<()> {
        if snap.max_parallelism != self.max_parallelism {
            return Err(Error::StateCorrupt {
                key_group: None,
                reason: format!(
                    "the snapshot has {} key groups but the vertex has {}: max parallelism cannot change",
                    snap.max_parallelism, self.max_parallelism
                ),
            });
        }
        let r = snap.range;
        if r.start > r.end || u32::from(r.end) > self.max_parallelism {
            return Err(Error::StateCorrupt {
                key_group: None,
                reason: format!(
                    "the snapshot's key-group range {r} is not within [0, {})",
                    self.max_parallelism
                ),
            });
        }
        // The owned groups this snapshot covers: its range within ours.
        for g in r.start.max(self.range.start)..r.end.min(self.range.end) {
            let gi = usize::from(g - self.range.start);
            if std::mem::replace(&mut covered[gi], true) {
                return Err(Error::StateCorrupt {
                    key_group: Some(KeyGroup(g)),
                    reason: "key group covered by more than one snapshot".into(),
                });
            }
        }
        Ok(())
    }

    /// Restores one owned key group's blob: its checksum, then each state's entries (kept
    /// aside, after checking their keys, for a state not registered yet).
    fn restore_blob(&mut self, blob: &KeyGroupBlob) -> Result<()> {
        let kg = blob.key_group;
        if crc32c::crc32c(&blob.bytes) != blob.crc32c {
            return Err(Error::StateCorrupt {
                key_group: Some(kg),
                reason: "blob checksum mismatch".into(),
            });
        }
        let entries: Vec<GroupEntry> =
            codec::decode(&blob.bytes, "key group blob").map_err(|e| Error::StateCorrupt {
                key_group: Some(kg),
                reason: e.to_string(),
            })?;
        let gi = usize::from(kg.0 - self.range.start);
        for entry in entries {
            match self.by_name.get(&entry.name) {
                Some(&id) => {
                    let table = &mut self.tables[id];
                    if table.kind() != entry.kind {
                        return Err(Error::StateTypeMismatch {
                            name: entry.name,
                            existing: format!("{:?}", table.kind()),
                            requested: format!("{:?} (in the restored snapshot)", entry.kind),
                        });
                    }
                    table.restore_group(gi, kg, &entry.data, Some(self.max_parallelism))?;
                }
                None => {
                    check_keys::<K>(&entry.data, kg, self.max_parallelism, &entry.name)?;
                    self.pending
                        .entry(entry.name)
                        .or_default()
                        .push((gi, kg, entry.kind, entry.data));
                }
            }
        }
        Ok(())
    }
}

/// A clone of a backend's state taken by [`KeyedStateBackend::capture`], to be encoded off the
/// task's thread.
pub struct KeyedStateCapture<K> {
    range: KeyGroupRange,
    max_parallelism: u32,
    tables: Vec<Box<dyn CapturedGroups>>,
    pending: HashMap<String, Pending>,
    deferred: Arc<DeferredStats>,
    _key: PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for KeyedStateCapture<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStateCapture")
            .field("range", &self.range)
            .field("states", &self.tables.len())
            .finish()
    }
}

impl<K: StateKey> KeyedStateCapture<K> {
    /// How much of this capture the task's backend encoded itself so far (final once the
    /// capture has been encoded: every group is encoded by then).
    pub fn deferred_encoding(&self) -> DeferredEncoding {
        let d = &self.deferred;
        DeferredEncoding {
            groups: d.groups.load(Ordering::Relaxed),
            total: std::time::Duration::from_nanos(d.total_nanos.load(Ordering::Relaxed)),
            longest: std::time::Duration::from_nanos(d.longest_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Encodes the captured state as one checksummed blob per non-empty key group.
    pub fn encode(&self) -> Result<KeyedSnapshot> {
        let mut groups = Vec::new();
        for gi in 0..self.range.len() {
            let entries = self.group_entries(gi)?;
            if entries.is_empty() {
                continue;
            }
            let bytes = codec::encode(&entries, "key group blob")?;
            groups.push(KeyGroupBlob {
                key_group: KeyGroup(self.range.start + gi as u16),
                crc32c: crc32c::crc32c(&bytes),
                bytes,
            });
        }
        Ok(KeyedSnapshot {
            max_parallelism: self.max_parallelism,
            range: self.range,
            groups,
        })
    }

    /// The bytes of `TaskSnapshot { keyed: Some(self.encode()?), operator }.to_bytes()`,
    /// produced without building the blobs first: each key group's blob is checksummed and
    /// written from its parts (each state's encoded entries, copied once, into the result).
    pub fn encode_task_snapshot(&self, operator: &OperatorSnapshot) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_task_snapshot_into(operator, &mut out)?;
        Ok(out)
    }

    /// [`encode_task_snapshot`](Self::encode_task_snapshot), appending to `out` (a buffer
    /// reused from one checkpoint to the next). On error, `out` may hold part of the bytes.
    pub fn encode_task_snapshot_into(
        &self,
        operator: &OperatorSnapshot,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let parts = self.task_snapshot_parts(operator)?;
        out.reserve(parts.len());
        for part in parts.iter() {
            out.extend_from_slice(part);
        }
        Ok(())
    }

    /// The bytes of [`encode_task_snapshot`](Self::encode_task_snapshot) as parts whose
    /// concatenation they are: the headers, written into one small buffer, and each key
    /// group's encoded entries, borrowed from the capture. Checkpoints hand the parts to the
    /// storage, which writes them without joining them first.
    pub(crate) fn task_snapshot_parts(
        &self,
        operator: &OperatorSnapshot,
    ) -> Result<SnapshotParts<'_>> {
        use crate::codec::msgpack::{write, write_array_len, write_bin_len, EncodeError};
        let enc = |r: std::result::Result<(), EncodeError>| {
            r.map_err(|e| Error::encode("task snapshot", e))
        };
        let mut out = SnapshotParts::default();
        // As rmp-serde writes `TaskSnapshot { keyed: Some(KeyedSnapshot { max_parallelism,
        // range, groups }), operator }`: structs as arrays of their fields, `Some(x)` as `x`.
        enc(write_array_len(&mut out.small, 2))?;
        enc(write_array_len(&mut out.small, 3))?;
        enc(write(&self.max_parallelism, &mut out.small))?;
        enc(write(&self.range, &mut out.small))?;
        let groups = (0..self.range.len()).filter(|gi| !self.group_is_empty(*gi));
        enc(write_array_len(&mut out.small, groups.clone().count()))?;
        // A blob is `[[name, kind, data], ...]`: `heads` holds its bytes other than the data,
        // `ends[i]` where the part before entry i's data ends.
        let (mut heads, mut ends) = (Vec::new(), Vec::new());
        for gi in groups {
            let entries = self.group_entries(gi)?;
            heads.clear();
            ends.clear();
            enc(write_array_len(&mut heads, entries.len()))?;
            for e in &entries {
                enc(write_array_len(&mut heads, 3))?;
                enc(write(e.name, &mut heads))?;
                enc(write(&e.kind, &mut heads))?;
                enc(write_bin_len(&mut heads, e.data.len()))?;
                ends.push(heads.len());
            }
            let starts = || std::iter::once(0).chain(ends.iter().copied());
            let blob = || {
                starts()
                    .zip(&ends)
                    .zip(&entries)
                    .flat_map(|((s, &e), entry)| [&heads[s..e], entry.data])
            };
            let crc = blob().fold(0, crc32c::crc32c_append);
            let len = blob().map(<[u8]>::len).sum();
            // KeyGroupBlob { key_group, crc32c, bytes }
            enc(write_array_len(&mut out.small, 3))?;
            enc(write(
                &KeyGroup(self.range.start + gi as u16),
                &mut out.small,
            ))?;
            enc(write(&crc, &mut out.small))?;
            enc(write_bin_len(&mut out.small, len))?;
            for ((s, &e), entry) in starts().zip(&ends).zip(&entries) {
                out.small.extend_from_slice(&heads[s..e]);
                out.borrowed(entry.data);
            }
        }
        enc(write(operator, &mut out.small))?;
        out.seal();
        Ok(out)
    }

    /// The entries of key group `gi` (index in the range): each state's, encoding them if
    /// the task has not, then the restored bytes of states not registered again.
    fn group_entries(&self, gi: usize) -> Result<Vec<GroupEntryRef<'_>>> {
        let mut entries = Vec::new();
        for t in &self.tables {
            if let Some(data) = t.group_bytes(gi)? {
                entries.push(GroupEntryRef {
                    name: t.name(),
                    kind: t.kind(),
                    data,
                });
            }
        }
        for (name, pending) in &self.pending {
            for (pgi, _, kind, data) in pending {
                if *pgi == gi {
                    entries.push(GroupEntryRef {
                        name,
                        kind: *kind,
                        data,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Whether key group `gi` (index in the range) holds anything to encode.
    fn group_is_empty(&self, gi: usize) -> bool {
        self.tables.iter().all(|t| t.group_is_empty(gi))
            && self
                .pending
                .values()
                .all(|p| p.iter().all(|(pgi, ..)| *pgi != gi))
    }
}

/// Bytes as a sequence of parts: runs of `small` (headers) between borrowed slices.
#[derive(Debug, Default)]
pub(crate) struct SnapshotParts<'a> {
    small: Vec<u8>,
    /// Where the run of `small` not yet in `parts` starts.
    sealed: usize,
    parts: Vec<Part<'a>>,
}

#[derive(Debug)]
enum Part<'a> {
    Small(std::ops::Range<usize>),
    Borrowed(&'a [u8]),
}

impl<'a> SnapshotParts<'a> {
    /// Ends the current run of `small` (if any) as a part.
    fn seal(&mut self) {
        if self.sealed < self.small.len() {
            self.parts.push(Part::Small(self.sealed..self.small.len()));
            self.sealed = self.small.len();
        }
    }

    /// Appends a borrowed slice after what `small` holds so far.
    fn borrowed(&mut self, bytes: &'a [u8]) {
        self.seal();
        if !bytes.is_empty() {
            self.parts.push(Part::Borrowed(bytes));
        }
    }

    /// The parts, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.parts.iter().map(|p| match p {
            Part::Small(r) => &self.small[r.clone()],
            Part::Borrowed(b) => b,
        })
    }

    /// The length of the concatenation.
    pub(crate) fn len(&self) -> usize {
        self.iter().map(<[u8]>::len).sum()
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
