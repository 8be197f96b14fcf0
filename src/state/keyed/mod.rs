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
//!
//! Schemas: each snapshot's header records every state's [`StateSchema`] once; a restore of
//! another schema (a field added, removed, renamed, or a version declared with
//! [`KeyedStateBackend::declare_version`] and its [`StateVersion`] migrations) rewrites the
//! stored values into the registered type, and a change they cannot make is
//! [`Error::StateIncompatible`].

mod backend;
mod capture;
mod handles;
mod inspect;
mod kinds;
mod map;
mod restore;
mod schema;
mod slots;
mod snapshot;
mod table;

pub use backend::KeyedStateBackend;
pub use capture::{DeferredEncoding, KeyedStateCapture};
pub use handles::{AggregatingState, Aggregator, ListState, MapState, ReducingState, ValueState};
pub use inspect::KeyedStateSummary;
pub use kinds::{StateKey, StateKind};
pub use restore::RestoreStats;
pub use schema::{StateSchema, StateVersion};
pub use snapshot::{KeyGroupBlob, KeyedSnapshot};
