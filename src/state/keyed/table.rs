//! The table of one state: a map per owned key group, shared copy-on-write with captures
//! ([`Table`]), behind the type-erased interface the backend keeps ([`ErasedTable`]).

use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::kinds::{StateKey, StateKind};
use super::map::StateMap;
use super::schema::{Evolution, StateSchema};
use super::slots::{
    lock, BufferPool, CaptureSlots, CapturedGroups, CapturedTable, DeferredStats, SlotCell,
};
use crate::codec;
use crate::error::{Error, Result};
use crate::state::key_group::{key_group_for, KeyGroup};
use crate::state::value::StateValue;

pub(super) trait ErasedTable<K>: Send {
    fn name(&self) -> &str;
    fn kind(&self) -> StateKind;
    fn value_type(&self) -> (TypeId, &'static str);
    /// The schema its values are stored under (with their field names once a value shows
    /// them).
    fn schema(&mut self) -> &Arc<StateSchema>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Decodes one group's entries, stored under `stored` (rewritten first when that is not
    /// the current schema); checks each key's group when `check_keys` holds the max
    /// parallelism (restore has already checked them when it is `None`).
    fn restore_group(
        &mut self,
        gi: usize,
        kg: KeyGroup,
        bytes: &[u8],
        check_keys: Option<u32>,
        stored: Option<&StateSchema>,
    ) -> Result<()>;
    fn clear(&mut self);
    /// Shares every group with a new capture: O(groups), whatever the entries. Replaces the
    /// table's link to any earlier capture.
    fn capture(&mut self, deferred: &Arc<DeferredStats>) -> Box<dyn CapturedGroups>;
    fn entries(&self) -> usize;
}

/// Probes a schema's stored field names from a value of a table (`None` when the value holds
/// no element, an empty list say).
pub(super) type Probe<T> = Box<dyn Fn(&StateSchema, &T) -> Option<StateSchema> + Send>;

pub(super) struct Table<K, T> {
    pub(super) name: String,
    pub(super) kind: StateKind,
    /// The current schema and the migrations from older ones, for restores.
    pub(super) evolution: Arc<Evolution>,
    /// The schema captures write: the current one, with the stored field names once probed.
    pub(super) schema: Arc<StateSchema>,
    /// Probes the field names from a value of the table; dropped once it has (or when the
    /// element type is not a struct).
    pub(super) probe: Option<Probe<T>>,
    /// Copy-on-write: a capture shares the groups. Before the first write to a group still
    /// shared with the newest capture, the task encodes the group for it ([`Table::settle`]);
    /// a write that still finds the group shared (an older capture, or one encoding the group
    /// right now) copies it.
    pub(super) groups: Vec<Arc<StateMap<K, T>>>,
    /// The newest capture's share of the groups; dangling once that capture is dropped.
    pub(super) capture: Weak<CaptureSlots<K, T>>,
    /// The groups the newest capture took while non-empty and the task has not written since.
    pub(super) captured: Vec<bool>,
    /// Buffers for the encoded groups of the next capture.
    pub(super) pool: BufferPool,
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
    pub(super) fn group_mut(&mut self, gi: usize) -> &mut StateMap<K, T> {
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

impl<K: StateKey, T: StateValue> ErasedTable<K> for Table<K, T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> StateKind {
        self.kind
    }
    fn value_type(&self) -> (TypeId, &'static str) {
        (TypeId::of::<T>(), std::any::type_name::<T>())
    }
    fn schema(&mut self) -> &Arc<StateSchema> {
        if let Some(probe) = &self.probe {
            let found = self
                .groups
                .iter()
                .flat_map(|g| g.values())
                .find_map(|v| probe(&self.schema, v));
            if let Some(schema) = found {
                self.schema = Arc::new(schema);
                self.probe = None;
            }
        }
        &self.schema
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
        stored: Option<&StateSchema>,
    ) -> Result<()> {
        // The bytes passed their checksum: a decode failure means another type wrote them.
        let map: StateMap<K, T> = match stored {
            Some(s) if !self.evolution.is_direct(stored) => {
                let rewritten = self.evolution.rewrite(s, bytes)?;
                codec::decode(&rewritten, "keyed state")
            }
            _ => codec::decode(bytes, "keyed state"),
        }
        .map_err(|e| {
            self.evolution
                .incompatible(stored, format!("key group {kg}: {e}"))
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
