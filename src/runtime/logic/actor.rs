//! The logic of an actor operator's task: [`ActorLogic`], a [`KeyedLogic`] that also takes
//! batches of commands from the command source and is the target of queries, and
//! [`InstanceLogic`], the same around the [`OperatorLogic`] of a non-keyed actor operator.
//!
//! Wrappers rather than branches inside `KeyedLogic` and `OperatorLogic`, so that the
//! per-record path of every other operator stays exactly what it was.

use std::any::Any;

use super::keyed::KeyedLogic;
use super::operator::OperatorLogic;
use super::shared::{Capture, TaskLogic};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::actor::wire::{CommandEnvelope, CommandFn, CommandRoute, InstanceCommandFn};
use crate::runtime::actor::{InstanceQueryContext, QueryContext};
use crate::runtime::channel::{Envelope, Origin};
use crate::runtime::operator::{Data, KeyedOperator, Operator};
use crate::runtime::time::Timestamp;
use crate::state::StateKey;

/// An actor operator's task: records and commands in, queries answered.
pub(crate) struct ActorLogic<K: StateKey, I, O, Op> {
    keyed: KeyedLogic<K, I, O, Op>,
    route: CommandRoute<CommandFn<K, O, Op>>,
}

impl<K: StateKey, I: Data, O: Data, Op: KeyedOperator<K, I, O>> ActorLogic<K, I, O, Op> {
    pub(crate) fn new(
        keyed: KeyedLogic<K, I, O, Op>,
        route: CommandRoute<CommandFn<K, O, Op>>,
    ) -> Self {
        ActorLogic { keyed, route }
    }

    /// Runs a query on the state of `key` (which this task must own).
    pub(crate) fn query<R>(
        &mut self,
        key: K,
        f: impl FnOnce(&Op, &QueryContext<'_, K>) -> Result<R>,
    ) -> Result<R> {
        self.keyed.query(key, f)
    }
}

impl<K: StateKey, I: Data, O: Data, Op: KeyedOperator<K, I, O>> TaskLogic
    for ActorLogic<K, I, O, Op>
{
    fn open(&mut self) -> Result<()> {
        self.keyed.open()
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()> {
        if batch.is::<Vec<CommandEnvelope<K>>>() {
            self.keyed.apply_commands(&self.route, batch)
        } else {
            self.keyed.on_records(batch, origin)
        }
    }

    fn end_of_input(&mut self) -> Result<()> {
        self.keyed.end_of_input()
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        self.keyed.capture(checkpoint)
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        self.keyed.checkpoint_complete(checkpoint)
    }

    fn on_watermark(&mut self, wm: Timestamp) -> Result<()> {
        self.keyed.on_watermark(wm)
    }

    fn on_processing_time(&mut self, now: Timestamp) -> Result<()> {
        self.keyed.on_processing_time(now)
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.keyed.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.keyed.has_buffered()
    }

    fn state_entries(&self) -> Option<u64> {
        self.keyed.state_entries()
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

/// A non-keyed actor operator's task: records and commands in, queries answered.
pub(crate) struct InstanceLogic<I, O, Op> {
    logic: OperatorLogic<I, O, Op>,
    route: CommandRoute<InstanceCommandFn<O, Op>>,
}

impl<I: Data, O: Data, Op: Operator<I, O>> InstanceLogic<I, O, Op> {
    pub(crate) fn new(
        logic: OperatorLogic<I, O, Op>,
        route: CommandRoute<InstanceCommandFn<O, Op>>,
    ) -> Self {
        InstanceLogic { logic, route }
    }

    /// Runs a query on the operator state.
    pub(crate) fn query<R>(
        &mut self,
        f: impl FnOnce(&Op, &InstanceQueryContext<'_>) -> Result<R>,
    ) -> Result<R> {
        self.logic.query(f)
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> TaskLogic for InstanceLogic<I, O, Op> {
    fn open(&mut self) -> Result<()> {
        self.logic.open()
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()> {
        if batch.is::<Vec<CommandEnvelope<u32>>>() {
            self.logic.apply_commands(&self.route, batch)
        } else {
            self.logic.on_records(batch, origin)
        }
    }

    fn end_of_input(&mut self) -> Result<()> {
        self.logic.end_of_input()
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        self.logic.capture(checkpoint)
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        self.logic.checkpoint_complete(checkpoint)
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.logic.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.logic.has_buffered()
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}
