//! The state operators own: key groups, keyed state, operator state, and their snapshots.
//!
//! - [`key_group`](self::key_group_for): stable key hashing and the key-group ranges tasks own.
//! - [`KeyedStateBackend`]: per-key state stored by key group, with typed handles
//!   ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`], [`AggregatingState`]).
//! - [`OperatorStateBackend`]: per-task list state (split or union on rescale) and broadcast
//!   state.
//! - [`TaskSnapshot`]: everything one task stores in a checkpoint, as bytes; keyed state with
//!   each state's [`StateSchema`], so that a state type may evolve ([`StateVersion`]).
//!
//! **Invariant:** a task only ever holds keys of the key groups it owns; restore checks every
//! key's group, every blob's checksum, and treats the bytes as untrusted input (bounded by the
//! storage layer's size limits before they get here; errors, never panics).

mod dynamic;
mod key_group;
mod keyed;
mod operator;
mod value;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::Result;

pub use dynamic::Dynamic;
pub use key_group::{
    key_group_for, stable_hash, task_for_key_group, KeyGroup, KeyGroupRange, StableHash,
    StableHasher, DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM,
};
pub use keyed::{
    AggregatingState, Aggregator, DeferredEncoding, KeyGroupBlob, KeyedSnapshot, KeyedStateBackend,
    KeyedStateCapture, KeyedStateSummary, ListState, MapState, ReducingState, RestoreStats,
    StateKey, StateKind, StateSchema, StateVersion, ValueState,
};
pub use operator::{
    redistribute, BroadcastSnapshot, BroadcastState, ListSnapshot, OperatorListState,
    OperatorSnapshot, OperatorStateBackend, Redistribution,
};
pub use value::{MapKey, StateValue};

/// One state a task has registered, as checkpoints describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateDescriptor {
    /// The state's name.
    pub name: String,
    /// Its kind: `Value`, `List`, `Map`, `Reducing`, `Aggregating` for keyed state;
    /// `OperatorList(Split)`, `OperatorList(Union)` or `Broadcast` for operator state.
    pub kind: String,
    /// The Rust type of its values (`K -> V` for a broadcast map), as `std::any::type_name`
    /// spells it.
    pub value_type: String,
}

/// Everything one task stores in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    /// Keyed state, for a task of a keyed vertex.
    pub keyed: Option<KeyedSnapshot>,
    /// Operator state.
    pub operator: OperatorSnapshot,
}

impl TaskSnapshot {
    /// Encodes the snapshot (MessagePack).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        codec::encode(self, "task snapshot")
    }

    /// Decodes a snapshot. The caller bounds the input's size (checkpoint storage does).
    pub fn from_bytes(bytes: &[u8]) -> Result<TaskSnapshot> {
        codec::decode(bytes, "task snapshot")
    }
}
