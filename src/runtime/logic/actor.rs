//! The logic of an actor operator's task ([`ActorLogic`]): a [`KeyedLogic`] that also takes
//! batches of commands from the command source, and is the target of queries.
//!
//! A wrapper rather than a branch inside `KeyedLogic`, so that the per-record path of every
//! other keyed operator stays exactly what it was.

use std::any::Any;

use super::keyed::KeyedLogic;
use super::shared::{Capture, TaskLogic};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::actor::wire::{CommandEnvelope, CommandRoute};
use crate::runtime::actor::QueryContext;
use crate::runtime::channel::{Envelope, Origin};
use crate::runtime::operator::{Data, KeyedOperator};
use crate::runtime::time::Timestamp;
use crate::state::StateKey;

/// An actor operator's task: records and commands in, queries answered.
pub(crate) struct ActorLogic<K: StateKey, I, O, Op> {
    keyed: KeyedLogic<K, I, O, Op>,
    route: CommandRoute<K, O, Op>,
}

impl<K: StateKey, I: Data, O: Data, Op: KeyedOperator<K, I, O>> ActorLogic<K, I, O, Op> {
    pub(crate) fn new(keyed: KeyedLogic<K, I, O, Op>, route: CommandRoute<K, O, Op>) -> Self {
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

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}
