//! A capture's share of one state's key groups: copy-on-write slots, each encoded once by
//! whichever side needs it first (the capture or the task), the type-erased view a capture
//! keeps of them, the pool of encoding buffers, and the count of the encoding the task did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::kinds::{StateKey, StateKind};
use super::map::StateMap;
use crate::error::{Error, Result};
use crate::state::value::StateValue;

/// A captured key group of one state: the capture's share of the group until it is encoded,
/// then its bytes, set once.
pub(super) struct SlotCell<K, T> {
    /// The group as captured; taken (and the share dropped) by the encoding.
    pub(super) pending: Mutex<Option<Arc<StateMap<K, T>>>>,
    /// The group's entries, encoded (empty for an empty group); or why the state's own
    /// serialization failed. Set under `pending`'s lock, so a group is encoded once.
    pub(super) encoded: OnceLock<std::result::Result<Vec<u8>, String>>,
}

/// Byte buffers of encoded groups, handed back by dropped captures for the next one (so
/// the encoding of every checkpoint does not fault in fresh pages).
pub(super) type BufferPool = Arc<Mutex<Vec<Vec<u8>>>>;

/// One capture's share of one state's key groups, reached by the capture (on the thread that
/// encodes it) and by the table (on the task, through a weak link).
pub(super) struct CaptureSlots<K, T> {
    pub(super) slots: Vec<SlotCell<K, T>>,
    pub(super) deferred: Arc<DeferredStats>,
    pub(super) pool: BufferPool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic while it was held; the data is still consistent
    // (every update is a single assignment).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: StateKey, T: StateValue> CaptureSlots<K, T> {
    /// The bytes of group `gi`, encoding it first if it is still pending (and dropping the
    /// capture's share of it). `on_task` counts the time in the capture's
    /// [`DeferredEncoding`].
    pub(super) fn encode_group(
        &self,
        gi: usize,
        on_task: bool,
    ) -> &std::result::Result<Vec<u8>, String> {
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
pub(super) trait CapturedGroups: Send + Sync {
    fn name(&self) -> &str;
    fn kind(&self) -> StateKind;
    /// Group `gi`'s entries (a MessagePack map), encoding them first if no one has yet; `None`
    /// when the group is empty.
    fn group_bytes(&self, gi: usize) -> Result<Option<&[u8]>>;
    fn group_is_empty(&self, gi: usize) -> bool;
}

pub(super) struct CapturedTable<K, T> {
    pub(super) name: String,
    pub(super) kind: StateKind,
    pub(super) slots: Arc<CaptureSlots<K, T>>,
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
pub(super) struct DeferredStats {
    pub(super) groups: AtomicU64,
    pub(super) total_nanos: AtomicU64,
    pub(super) longest_nanos: AtomicU64,
}

impl DeferredStats {
    fn record(&self, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.groups.fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.longest_nanos.fetch_max(nanos, Ordering::Relaxed);
    }
}
