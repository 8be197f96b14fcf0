//! The logic of a non-keyed operator task ([`OperatorLogic`]): an [`Operator`] with operator
//! state, its failed records contained and routed; for a non-keyed actor operator also its
//! commands (applied in order with the records) and queries (run between batches).

use std::any::Any;

use super::dead_letter::{contained, route_failure, side_outputs, DeadLetterSpec};
use super::shared::{collector, downcast, operator_capture, Capture, LogicParams, TaskLogic};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::actor::wire::{CommandEnvelope, CommandRoute, InstanceCommandFn};
use crate::runtime::actor::InstanceQueryContext;
use crate::runtime::channel::{Collector, Envelope, Origin};
use crate::runtime::operator::{Data, Operator, OperatorContext, TaskInfo};
use crate::runtime::side_output::SideOutputs;
use crate::state::OperatorStateBackend;

/// The context a non-keyed operator's callbacks get, borrowing only the fields it needs (a
/// macro, so that `self.op` and `self.out` stay free to borrow beside it).
macro_rules! op_ctx {
    ($s:ident) => {
        OperatorContext {
            info: &$s.info,
            state: &mut $s.state,
        }
    };
}

/// A non-keyed operator task.
pub(crate) struct OperatorLogic<I, O, Op> {
    op: Op,
    dead_letter: Option<DeadLetterSpec<I>>,
    /// Dead letters, written through the checkpoint's two-phase commit.
    side: SideOutputs,
    info: TaskInfo,
    state: OperatorStateBackend,
    out: Collector<O>,
    _i: std::marker::PhantomData<fn(I)>,
}

impl<I: Data, O: Data, Op: Operator<I, O>> OperatorLogic<I, O, Op> {
    pub(crate) fn new(
        op: Op,
        dead_letter: Option<DeadLetterSpec<I>>,
        p: LogicParams,
    ) -> Result<Self> {
        let side = side_outputs(&p, dead_letter.as_ref())?;
        Ok(OperatorLogic {
            side,
            dead_letter,
            out: collector(&p.outputs, p.batch_size, p.info.max_parallelism)?,
            state: OperatorStateBackend::restored(p.restore.operator),
            info: p.info,
            op,
            _i: std::marker::PhantomData,
        })
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> OperatorLogic<I, O, Op> {
    /// Runs a query on the operator state.
    pub(crate) fn query<R>(
        &mut self,
        f: impl FnOnce(&Op, &InstanceQueryContext<'_>) -> Result<R>,
    ) -> Result<R> {
        let ctx = InstanceQueryContext {
            info: &self.info,
            state: &self.state,
        };
        f(&self.op, &ctx)
    }

    /// Applies a batch of commands to the operator state, answering each caller. A failing
    /// handler answers its caller with the error; the task goes on.
    pub(super) fn apply_commands(
        &mut self,
        route: &CommandRoute<InstanceCommandFn<O, Op>>,
        batch: Box<dyn Any + Send>,
    ) -> Result<()> {
        let mut ctx = op_ctx!(self);
        for c in downcast::<CommandEnvelope<u32>>(batch)? {
            let (op, out) = (&mut self.op, &mut self.out);
            let handler = route.handlers.get(&c.name);
            let mut applied = Err(route.missing(&c.name));
            let result = contained(|| {
                if let Some(h) = handler {
                    applied = h(&c.payload, op, &mut ctx, out);
                }
                Ok(())
            });
            route.answer(c.run, c.seq, &c.name, result.and(applied));
        }
        Ok(())
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> TaskLogic for OperatorLogic<I, O, Op> {
    fn open(&mut self) -> Result<()> {
        self.side.open(&mut self.state)?;
        self.op.open(&mut op_ctx!(self))?;
        self.side.opened();
        Ok(())
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()> {
        let mut ctx = op_ctx!(self);
        for (i, r) in downcast::<I>(batch)?.into_iter().enumerate() {
            let kept = self.dead_letter.as_ref().map(|_| r.clone());
            let (op, out) = (&mut self.op, &mut self.out);
            if let Err(e) = contained(|| op.process(r, &mut ctx, out)) {
                route_failure(
                    self.dead_letter.as_ref(),
                    &mut self.side,
                    kept,
                    e,
                    origin,
                    i,
                )?;
            }
        }
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<()> {
        self.op.end_of_input(&mut op_ctx!(self), &mut self.out)
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        self.side.pre_commit(checkpoint, &mut self.state)?;
        operator_capture(&self.state)
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        self.side.commit(checkpoint)?;
        self.op.checkpoint_complete(checkpoint, &mut op_ctx!(self))
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.out.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.out.has_buffered()
    }
}
