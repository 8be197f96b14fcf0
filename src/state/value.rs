//! The traits a type must satisfy to be stored in state, keyed or operator state alike.
//!
//! A leaf of `state`: `keyed` and `operator` both build on it, so neither imports the other
//! for these bounds.

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A type usable as a value of state.
pub trait StateValue: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T> StateValue for T where T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

/// A type usable as the user key of a [`MapState`](super::MapState).
pub trait MapKey: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T> MapKey for T where
    T: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
