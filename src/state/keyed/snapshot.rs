//! The snapshot format of keyed state: one checksummed blob per key group
//! ([`KeyGroupBlob`], [`KeyedSnapshot`]) after a header of each state's schema, the entries a
//! blob holds, and the restored entries of states not registered yet ([`Pending`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::kinds::StateKind;
use super::schema::StateSchema;
use crate::state::key_group::{KeyGroup, KeyGroupRange};

/// One state's entries of one key group, as stored in a key group blob.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GroupEntry {
    pub(super) name: String,
    pub(super) kind: StateKind,
    #[serde(with = "serde_bytes")]
    pub(super) data: Vec<u8>,
}

/// A [`GroupEntry`] borrowing its parts: encodes to the same bytes.
#[derive(Serialize)]
pub(super) struct GroupEntryRef<'a> {
    pub(super) name: &'a str,
    pub(super) kind: StateKind,
    #[serde(with = "serde_bytes")]
    pub(super) data: &'a [u8],
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
    /// The schema of each state in the blobs, once per state (empty in snapshots of snapflow
    /// versions that did not record schemas: their states restore as they are).
    #[serde(default)]
    pub schemas: Vec<StateSchema>,
}

impl KeyedSnapshot {
    /// The total size of the blobs in bytes.
    pub fn size_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.bytes.len()).sum()
    }
}

/// Restored bytes of one key group of a state nobody has registered yet.
#[derive(Debug, Clone)]
pub(super) struct PendingGroup {
    /// The group's index in the backend's range.
    pub(super) gi: usize,
    pub(super) kg: KeyGroup,
    pub(super) kind: StateKind,
    pub(super) data: Vec<u8>,
    /// The schema the bytes were stored under, when the snapshot recorded it.
    pub(super) schema: Option<Arc<StateSchema>>,
}

/// Restored bytes of a state nobody has registered yet, by key group.
pub(super) type Pending = Vec<PendingGroup>;
