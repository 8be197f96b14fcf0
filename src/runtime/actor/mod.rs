//! Operators written as actors, and the addresses an application uses to reach them.
//!
//! An [`ActorOperator`] is a keyed operator with a mailbox: besides the stream's records it
//! handles message types of its own, one handler per type, each with its own reply type, in
//! the style of actix's `Handler<M>` for a `Message<Result = R>`. Two kinds of messages, told
//! apart by the trait a message type implements:
//!
//! - a [`Query`] reads the live state of one key and changes nothing ([`QueryHandler`] gets
//!   `&self` and a read-only [`QueryContext`]). It is answered at once by the task owning the
//!   key, between two batches of records, and is never logged. It may see state that a later
//!   restore rolls back.
//! - a [`Command`] may change state and emit records ([`CommandHandler`] gets `&mut self`, the
//!   key's state and the collector). It takes effect exactly once: it is appended to a
//!   replayable log owned by the job (the vertex's command log) before it is applied, read
//!   from there by a source like any input, applied in order with the task's records (barriers
//!   travel behind it), and replayed after a restore. Its reply comes when it was applied
//!   (visible-once: that application may still be rolled back by a restore and repeated), and
//!   [`Applied::durable`] resolves when the checkpoint that contains it has completed, with the
//!   reply of the application that checkpoint holds (durable-once).
//!
//! The job gives the application an [`OperatorRef`] per actor vertex
//! ([`JobHandle::operator`](crate::JobHandle::operator)): `query(key, q)` and
//! `command(key, c)` route to the task owning the key's key group and return the reply as a
//! future, as `Addr::send` does. Sending a message type the operator has no handler for does
//! not compile.
//!
//! A query the operator has no handler for is a compile error:
//!
//! ```compile_fail
//! use snapflow::prelude::*;
//! struct Unknown;
//! impl Query for Unknown { type Reply = (); }
//! #[derive(Clone)]
//! struct Counter;
//! impl ActorOperator for Counter {
//!     type Key = u64; type In = u64; type Out = u64;
//!     fn process(&mut self, r: u64, _: &mut KeyedContext<'_, u64>, out: &mut Collector<u64>) -> Result<()> {
//!         out.emit(r);
//!         Ok(())
//!     }
//! }
//! async fn ask(counter: OperatorRef<Counter>) {
//!     let _ = counter.query(1, Unknown).await; // no `QueryHandler<Unknown> for Counter`
//! }
//! ```
//!
//! A non-keyed operator can be an actor too: an [`InstanceOperator`] keeps operator state and
//! is addressed by instance index, or broadcast to every instance, through an [`InstanceRef`]
//! ([`JobHandle::instance_operator`](crate::JobHandle::instance_operator)). What an
//! index means across a rescale is in [`InstanceOperator`]'s docs.
//!
//! Restarts: a query for a task that is restarting waits for the restored task, for at most
//! [`JobConfig::query_timeout`](crate::JobConfig::query_timeout), then fails with
//! [`Error::Unavailable`](crate::Error::Unavailable), which is retryable. A command does not
//! time out: once it is in the command log it will be applied, after a restore if need be;
//! its future fails only if the job ends first ([`Error::JobEnded`](crate::Error::JobEnded)).
//!
//! Invariants: the command log is the only way a message changes an operator's state; a
//! command's identity (the run that sent it and its sequence number) is in the log record, so a
//! replayed command answers no new caller twice; query and command handlers run inside the
//! task's panic boundary, and a failing handler answers its caller with the error and leaves
//! the task running. A command handler that fails part-way keeps the state changes and records
//! it made before failing (the same in every replay): validate first, then change state.
//!
//! Limits: the command source never ends, so a job with an actor operator runs until it is
//! stopped ([`JobHandle::stop`](crate::JobHandle::stop)), even when its other sources are
//! bounded. Commands carry no event time: their channels never hold back the operator's
//! watermark. An actor operator needs exactly-once (aligned) checkpoints; `build` refuses it
//! otherwise. A command type must be declared in [`ActorOperator::commands`]: an undeclared
//! one is refused before it reaches the log.

mod adapter;
mod address;
mod context;
mod ingress;
mod instance;
mod outside;
pub(crate) mod wire;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::channel::Collector;
use super::operator::{Data, KeyedContext, OperatorContext};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::time::{TimeDomain, Timestamp};
use crate::state::StateKey;

pub(crate) use adapter::{ActorAdapter, InstanceAdapter};
pub use address::{Applied, OperatorRef};
pub use context::{InstanceQueryContext, QueryContext};
pub use ingress::{Ingest, Ingress};
pub use instance::InstanceRef;
pub(crate) use outside::{ActorEntry, IngressEntry, Outside};

/// A keyed operator with a mailbox: it handles the stream's records (like a
/// [`KeyedOperator`](crate::KeyedOperator)) and the [`Query`] and [`Command`] types it has
/// handlers for. One instance runs per task, cloned from the one given to
/// [`KeyedStream::actor`](crate::KeyedStream::actor).
pub trait ActorOperator: Clone + Send + 'static {
    /// The key messages are addressed by (the stream's key).
    type Key: StateKey;
    /// The records it reads.
    type In: Data;
    /// The records it emits.
    type Out: Data;

    /// Declares the command types it takes: `commands.add::<Transfer>()` for each type it has
    /// a [`CommandHandler`] for. Commands are read back from the command log by name, so only
    /// declared types can be applied (a record of an undeclared type is answered with an
    /// error). Queries need no declaration.
    fn commands(_commands: &mut Commands<Self>) {}

    /// Called once before the first record or message, after state is restored: register
    /// state here.
    fn open(&mut self, _ctx: &mut KeyedContext<'_, Self::Key>) -> Result<()> {
        Ok(())
    }

    /// Called for every record, with the record's key as the current key.
    fn process(
        &mut self,
        record: Self::In,
        ctx: &mut KeyedContext<'_, Self::Key>,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;

    /// Called when a timer of the current key fires.
    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        _ctx: &mut KeyedContext<'_, Self::Key>,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called once when every input has ended.
    fn end_of_input(
        &mut self,
        _ctx: &mut KeyedContext<'_, Self::Key>,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when a checkpoint this task took part in is complete.
    fn checkpoint_complete(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &mut KeyedContext<'_, Self::Key>,
    ) -> Result<()> {
        Ok(())
    }
}

/// A read-only message to an actor operator: answered from the live state of one key.
pub trait Query: Send + 'static {
    /// What the handler answers.
    type Reply: Send + 'static;
}

/// A message that changes an actor operator's state: logged before it is applied, applied
/// exactly once. It is stored in the job's command log with MessagePack, under [`name`].
///
/// [`name`]: Command::name
pub trait Command: Serialize + DeserializeOwned + Send + 'static {
    /// What the handler answers. Cloned once: one copy answers the caller when the command is
    /// applied, the other when its checkpoint completes.
    type Reply: Clone + Send + 'static;

    /// The name the command is logged under: keep it stable across versions of the program
    /// (the default, the Rust type name, changes when the type moves).
    fn name() -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// Answers a [`Query`] from the state of the key it was sent to (the context's current key).
pub trait QueryHandler<Q: Query>: ActorOperator {
    /// Reads state and answers; an error goes to the caller as
    /// [`Error::HandlerFailed`](crate::Error::HandlerFailed).
    fn query(&self, query: Q, ctx: &QueryContext<'_, Self::Key>) -> Result<Q::Reply>;
}

/// Applies a [`Command`] to the state of the key it was sent to (the context's current key).
pub trait CommandHandler<C: Command>: ActorOperator {
    /// Changes state, may emit records, and answers. It must be deterministic given the state
    /// and the command: it runs again, on the restored state, after a restore. An error goes to
    /// the caller as [`Error::HandlerFailed`](crate::Error::HandlerFailed); the task goes on.
    fn command(
        &mut self,
        command: C,
        ctx: &mut KeyedContext<'_, Self::Key>,
        out: &mut Collector<Self::Out>,
    ) -> Result<C::Reply>;
}

/// The command types an [`ActorOperator`] declares (see [`ActorOperator::commands`]).
pub struct Commands<Op: ActorOperator>(
    pub(crate) wire::Declared<wire::CommandFn<Op::Key, Op::Out, ActorAdapter<Op>>>,
);

impl<Op: ActorOperator> std::fmt::Debug for Commands<Op> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<Op: ActorOperator> Commands<Op> {
    pub(crate) fn new() -> Self {
        Commands(wire::Declared::new())
    }

    /// Declares command type `C`. Two types under one [`Command::name`] are an error of the
    /// job's `build`.
    pub fn add<C: Command>(&mut self) -> &mut Self
    where
        Op: CommandHandler<C>,
    {
        self.0.insert(
            std::any::type_name::<Op>(),
            C::name(),
            wire::command_fn::<Op, C>(),
        );
        self
    }
}

/// A non-keyed operator with a mailbox: it handles the stream's records (like an
/// [`Operator`](crate::Operator)) with operator state, and the [`Query`] and [`Command`] types
/// it has handlers for, sent to one instance by index or to all of them. One instance runs per
/// task, cloned from the one given to [`Stream::actor`](crate::Stream::actor).
///
/// Instance `i` is task `i` of the vertex. Queries and commands behave as for a keyed
/// [`ActorOperator`] (answered from live state; logged, applied exactly
/// once in order with the records, replayed after a restore). A restore at the same
/// parallelism gives each instance its own state back; at another parallelism the operator
/// state is redistributed (split lists divided, union lists and broadcast state copied), so
/// address an instance by index for what is per-instance by nature (a shard, a connection)
/// and broadcast ([`InstanceRef::command_all`]) for what every instance should apply.
pub trait InstanceOperator: Clone + Send + 'static {
    /// The records it reads.
    type In: Data;
    /// The records it emits.
    type Out: Data;

    /// Declares the command types it takes: `commands.add::<Reset>()` for each type it has an
    /// [`InstanceCommandHandler`] for (see [`ActorOperator::commands`]).
    fn commands(_commands: &mut InstanceCommands<Self>) {}

    /// Called once before the first record or message, after state is restored: register
    /// state here.
    fn open(&mut self, _ctx: &mut OperatorContext<'_>) -> Result<()> {
        Ok(())
    }

    /// Called for every record.
    fn process(
        &mut self,
        record: Self::In,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<Self::Out>,
    ) -> Result<()>;

    /// Called once when every input has ended.
    fn end_of_input(
        &mut self,
        _ctx: &mut OperatorContext<'_>,
        _out: &mut Collector<Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when a checkpoint this task took part in is complete.
    fn checkpoint_complete(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &mut OperatorContext<'_>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Answers a [`Query`] from an instance's operator state.
pub trait InstanceQueryHandler<Q: Query>: InstanceOperator {
    /// Reads state and answers; an error goes to the caller as
    /// [`Error::HandlerFailed`](crate::Error::HandlerFailed).
    fn query(&self, query: Q, ctx: &InstanceQueryContext<'_>) -> Result<Q::Reply>;
}

/// Applies a [`Command`] to an instance's operator state.
pub trait InstanceCommandHandler<C: Command>: InstanceOperator {
    /// Changes state, may emit records, and answers. It must be deterministic given the state
    /// and the command: it runs again, on the restored state, after a restore. An error goes to
    /// the caller as [`Error::HandlerFailed`](crate::Error::HandlerFailed); the task goes on.
    fn command(
        &mut self,
        command: C,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<Self::Out>,
    ) -> Result<C::Reply>;
}

/// The command types an [`InstanceOperator`] declares (see [`InstanceOperator::commands`]).
pub struct InstanceCommands<Op: InstanceOperator>(
    pub(crate) wire::Declared<wire::InstanceCommandFn<Op::Out, InstanceAdapter<Op>>>,
);

impl<Op: InstanceOperator> std::fmt::Debug for InstanceCommands<Op> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<Op: InstanceOperator> InstanceCommands<Op> {
    pub(crate) fn new() -> Self {
        InstanceCommands(wire::Declared::new())
    }

    /// Declares command type `C`. Two types under one [`Command::name`] are an error of the
    /// job's `build`.
    pub fn add<C: Command>(&mut self) -> &mut Self
    where
        Op: InstanceCommandHandler<C>,
    {
        self.0.insert(
            std::any::type_name::<Op>(),
            C::name(),
            wire::instance_command_fn::<Op, C>(),
        );
        self
    }
}
