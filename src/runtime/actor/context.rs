//! [`QueryContext`] and [`InstanceQueryContext`]: what a query handler can read.

use crate::ids::TaskInfo;
use crate::state::{KeyedStateBackend, OperatorStateBackend, StateKey};

/// What a [`QueryHandler`](super::QueryHandler) can reach: the keyed state, read-only, with the
/// query's key as the current key.
#[derive(Debug)]
pub struct QueryContext<'a, K: StateKey> {
    pub(crate) info: &'a TaskInfo,
    pub(crate) keyed: &'a KeyedStateBackend<K>,
}

impl<'a, K: StateKey> QueryContext<'a, K> {
    /// The task answering.
    pub fn task(&self) -> &TaskInfo {
        self.info
    }

    /// The key the query was sent to.
    pub fn key(&self) -> Option<&K> {
        self.keyed.current_key()
    }

    /// The task's keyed state (read it with a handle's `get`, `entries`...).
    pub fn state(&self) -> &'a KeyedStateBackend<K> {
        self.keyed
    }
}

/// What an [`InstanceQueryHandler`](super::InstanceQueryHandler) can reach: the instance's
/// operator state, read-only.
#[derive(Debug)]
pub struct InstanceQueryContext<'a> {
    pub(crate) info: &'a TaskInfo,
    pub(crate) state: &'a OperatorStateBackend,
}

impl<'a> InstanceQueryContext<'a> {
    /// The task answering (its index is the instance the query was sent to).
    pub fn task(&self) -> &TaskInfo {
        self.info
    }

    /// The instance's operator state (read it with a handle's `get`, `entries`...).
    pub fn state(&self) -> &'a OperatorStateBackend {
        self.state
    }
}
