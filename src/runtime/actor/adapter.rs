//! [`ActorAdapter`]: runs an [`ActorOperator`] as the [`KeyedOperator`] of a keyed task;
//! [`InstanceAdapter`]: runs an [`InstanceOperator`] as the [`Operator`] of a non-keyed task.

use super::{ActorOperator, InstanceOperator};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::channel::Collector;
use crate::runtime::operator::{KeyedContext, KeyedOperator, Operator, OperatorContext};
use crate::runtime::time::{TimeDomain, Timestamp};

/// An actor operator seen as a keyed operator (its record side).
#[derive(Clone)]
pub(crate) struct ActorAdapter<Op>(pub(crate) Op);

impl<Op: ActorOperator> KeyedOperator<Op::Key, Op::In, Op::Out> for ActorAdapter<Op> {
    fn open(&mut self, ctx: &mut KeyedContext<'_, Op::Key>) -> Result<()> {
        self.0.open(ctx)
    }

    #[inline]
    fn process(
        &mut self,
        record: Op::In,
        ctx: &mut KeyedContext<'_, Op::Key>,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.0.process(record, ctx, out)
    }

    fn end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, Op::Key>,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.0.end_of_input(ctx, out)
    }

    fn checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
        ctx: &mut KeyedContext<'_, Op::Key>,
    ) -> Result<()> {
        self.0.checkpoint_complete(checkpoint, ctx)
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, Op::Key>,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.0.on_timer(timestamp, domain, ctx, out)
    }
}

/// A non-keyed actor operator seen as an operator (its record side).
#[derive(Clone)]
pub(crate) struct InstanceAdapter<Op>(pub(crate) Op);

impl<Op: InstanceOperator> Operator<Op::In, Op::Out> for InstanceAdapter<Op> {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<()> {
        self.0.open(ctx)
    }

    #[inline]
    fn process(
        &mut self,
        record: Op::In,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.0.process(record, ctx, out)
    }

    fn end_of_input(
        &mut self,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<Op::Out>,
    ) -> Result<()> {
        self.0.end_of_input(ctx, out)
    }

    fn checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
        ctx: &mut OperatorContext<'_>,
    ) -> Result<()> {
        self.0.checkpoint_complete(checkpoint, ctx)
    }
}
