//! What keyed state is keyed by and made of: the key trait ([`StateKey`]) and the kinds of
//! state ([`StateKind`]).

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state::key_group::StableHash;

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
    /// An accumulator per key, fed by an [`Aggregator`](crate::state::Aggregator).
    Aggregating,
}
