//! [`InstanceRef`]: the application's address of a non-keyed actor operator vertex (an
//! [`InstanceOperator`]): its instances by index, or all of them at once.
//!
//! Invariant: an instance's commands reach it through the command source and a hash edge whose
//! key group is one that task `i` owns, so commands and records are ordered by the same
//! barriers as in the keyed case.

use std::marker::PhantomData;
use std::sync::Arc;

use super::address::{lookup_entry, Applied, Target};
use super::outside::{ActorEntry, Outside};
use super::{
    Command, InstanceAdapter, InstanceCommandHandler, InstanceOperator, InstanceQueryHandler, Query,
};
use crate::error::{Error, Result};
use crate::log::PartitionId;
use crate::runtime::logic::InstanceLogic;

type Logic<Op> =
    InstanceLogic<<Op as InstanceOperator>::In, <Op as InstanceOperator>::Out, InstanceAdapter<Op>>;

/// The address of a non-keyed actor operator vertex: its instances by index, or all of them
/// (see [`InstanceOperator`]). Cheap to clone; valid for the life of the job, across
/// restarts of its tasks. Errors, restarts and timeouts are those of
/// [`OperatorRef`](super::OperatorRef).
pub struct InstanceRef<Op: InstanceOperator> {
    entry: Arc<ActorEntry>,
    outside: Arc<Outside>,
    _op: PhantomData<fn() -> Op>,
}

impl<Op: InstanceOperator> Clone for InstanceRef<Op> {
    fn clone(&self) -> Self {
        InstanceRef {
            entry: Arc::clone(&self.entry),
            outside: Arc::clone(&self.outside),
            _op: PhantomData,
        }
    }
}

impl<Op: InstanceOperator> std::fmt::Debug for InstanceRef<Op> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRef")
            .field("vertex", &self.entry.vertex)
            .field("instances", &self.entry.parallelism)
            .finish()
    }
}

impl<Op: InstanceOperator> InstanceRef<Op> {
    /// The address of non-keyed actor operator vertex `name`, checked to run `Op`.
    pub(crate) fn lookup(outside: &Arc<Outside>, name: &str) -> Result<InstanceRef<Op>> {
        Ok(InstanceRef {
            entry: lookup_entry::<Op>(outside, name, false)?,
            outside: Arc::clone(outside),
            _op: PhantomData,
        })
    }

    fn target(&self, index: u32) -> Result<Target<'_>> {
        if index >= self.entry.parallelism {
            return Err(Error::NoSuchEndpoint {
                what: format!("instance {index} of '{}'", self.entry.vertex),
                reason: format!(
                    "it has {} instances, numbered from 0",
                    self.entry.parallelism
                ),
            });
        }
        Ok(Target {
            entry: &self.entry,
            outside: &self.outside,
        })
    }

    /// The vertex's name.
    pub fn vertex(&self) -> &str {
        &self.entry.vertex
    }

    /// How many instances the vertex runs (its parallelism): indexes `0..instances()`.
    pub fn instances(&self) -> u32 {
        self.entry.parallelism
    }

    /// Asks instance `index` the query `query`, answered from its live state. An index not
    /// below [`instances`](Self::instances) fails with [`Error::NoSuchEndpoint`]; otherwise as
    /// [`OperatorRef::query`](super::OperatorRef::query).
    pub async fn query<Q: Query>(&self, index: u32, query: Q) -> Result<Q::Reply>
    where
        Op: InstanceQueryHandler<Q>,
    {
        let run = |logic: &mut Logic<Op>, query: Q| logic.query(|op, ctx| op.0.query(query, ctx));
        self.target(index)?
            .query::<Logic<Op>, _, Q>(index, query, run)
            .await
    }

    /// Asks every instance the query, concurrently: the answers in instance order.
    pub async fn query_all<Q: Query + Clone>(&self, query: Q) -> Vec<Result<Q::Reply>>
    where
        Op: InstanceQueryHandler<Q>,
    {
        let asks = (0..self.instances()).map(|i| self.query(i, query.clone()));
        futures::future::join_all(asks).await
    }

    /// Sends the command to instance `index`: logged, then applied exactly once, as
    /// [`OperatorRef::command`](super::OperatorRef::command). An index not below
    /// [`instances`](Self::instances) fails with [`Error::NoSuchEndpoint`].
    pub async fn command<C: Command>(&self, index: u32, command: C) -> Result<Applied<C::Reply>>
    where
        Op: InstanceCommandHandler<C>,
    {
        let partition = PartitionId(index % self.entry.partitions);
        self.target(index)?
            .command(index, partition, &command)
            .await
    }

    /// Sends the command to every instance, concurrently (one command log record each): the
    /// answers in instance order. Each instance applies its copy exactly once, at its own
    /// point in its own records.
    pub async fn command_all<C: Command + Clone>(
        &self,
        command: C,
    ) -> Vec<Result<Applied<C::Reply>>>
    where
        Op: InstanceCommandHandler<C>,
    {
        let sends = (0..self.instances()).map(|i| self.command(i, command.clone()));
        futures::future::join_all(sends).await
    }
}
