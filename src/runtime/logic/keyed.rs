//! The logic of a keyed operator task ([`KeyedLogic`]): a [`KeyedOperator`] with keyed state
//! restored by key group, timers fired by watermark and processing time, and operator state;
//! for an actor operator also its commands (read from the command source, applied in order
//! with the records) and queries (run on the live state between batches).

use std::any::Any;
use std::sync::Arc;

use super::dead_letter::{contained, route_failure, side_outputs, DeadLetterSpec};
use super::shared::{collector, downcast, Capture, LogicParams, TaskLogic};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::actor::wire::{CommandEnvelope, CommandFn, CommandRoute};
use crate::runtime::actor::QueryContext;
use crate::runtime::channel::{Collector, Envelope, Origin};
use crate::runtime::operator::{Data, KeyedContext, KeyedOperator, TaskInfo};
use crate::runtime::side_output::SideOutputs;
use crate::runtime::time::{TimeDomain, TimerService, Timestamp};
use crate::state::{
    KeyGroupRange, KeyedSnapshot, KeyedStateBackend, OperatorStateBackend, StateKey,
};

/// The context a keyed operator's callbacks get; a macro for the same reason as `op_ctx!`.
macro_rules! keyed_ctx {
    ($s:ident) => {
        KeyedContext {
            info: &$s.info,
            keyed: &mut $s.keyed,
            operator: &mut $s.operator,
            timers: $s.timers.as_mut(),
            watermark: $s.watermark,
            processing_time: $s.processing_time,
            late: &$s.counters.late_records,
            side: &mut $s.side,
        }
    };
}

/// A keyed operator task.
pub(crate) struct KeyedLogic<K: StateKey, I, O, Op> {
    op: Op,
    dead_letter: Option<DeadLetterSpec<I>>,
    /// Dead letters and late records, written through the checkpoint's two-phase commit.
    side: SideOutputs,
    timers: Option<TimerService<K>>,
    watermark: Timestamp,
    processing_time: Timestamp,
    counters: Arc<crate::runtime::metrics::TaskCounters>,
    key: Arc<dyn Fn(&I) -> K + Send + Sync>,
    info: TaskInfo,
    keyed: KeyedStateBackend<K>,
    operator: OperatorStateBackend,
    restore: Arc<Vec<KeyedSnapshot>>,
    out: Collector<O>,
}

impl<K: StateKey, I: Data, O: Data, Op: KeyedOperator<K, I, O>> KeyedLogic<K, I, O, Op> {
    pub(crate) fn new(
        op: Op,
        key: Arc<dyn Fn(&I) -> K + Send + Sync>,
        dead_letter: Option<DeadLetterSpec<I>>,
        p: LogicParams,
    ) -> Result<Self> {
        let range = KeyGroupRange::for_task(
            p.info.task.index,
            p.info.parallelism,
            p.info.max_parallelism,
        )?;
        let side = side_outputs(&p, dead_letter.as_ref())?;
        Ok(KeyedLogic {
            side,
            dead_letter,
            timers: None,
            watermark: Timestamp::MIN,
            processing_time: Timestamp::MIN,
            counters: Arc::clone(&p.counters),
            keyed: KeyedStateBackend::new(range, p.info.max_parallelism)?,
            operator: OperatorStateBackend::restored(p.restore.operator),
            restore: p.restore.keyed,
            out: collector(&p.outputs, p.batch_size, p.info.max_parallelism)?,
            info: p.info,
            key,
            op,
        })
    }

    /// Runs a query on the state of `key` (which this task must own).
    pub(crate) fn query<R>(
        &mut self,
        key: K,
        f: impl FnOnce(&Op, &QueryContext<'_, K>) -> Result<R>,
    ) -> Result<R> {
        self.keyed.set_current_key(key)?;
        let ctx = QueryContext {
            info: &self.info,
            keyed: &self.keyed,
        };
        f(&self.op, &ctx)
    }

    /// Applies a batch of commands, each to its key's state, answering each caller. A failing
    /// handler answers its caller with the error; the task goes on.
    pub(super) fn apply_commands(
        &mut self,
        route: &CommandRoute<CommandFn<K, O, Op>>,
        batch: Box<dyn Any + Send>,
    ) -> Result<()> {
        let commands = downcast::<CommandEnvelope<K>>(batch)?;
        let mut ctx = keyed_ctx!(self);
        for c in commands {
            let (op, out, key) = (&mut self.op, &mut self.out, c.key);
            let handler = route.handlers.get(&c.name);
            let mut applied = Err(route.missing(&c.name));
            let result = contained(|| {
                ctx.keyed.set_current_key(key)?;
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

impl<K: StateKey, I: Data, O: Data, Op: KeyedOperator<K, I, O>> KeyedLogic<K, I, O, Op> {
    /// Fires every timer of `domain` at or before `up_to`, in timestamp order.
    fn fire(&mut self, domain: TimeDomain, up_to: Timestamp) -> Result<()> {
        loop {
            let Some(timers) = self.timers.as_mut() else {
                return Ok(());
            };
            let Some(ts) = timers.pop_due(&mut self.keyed, domain, up_to)? else {
                return Ok(());
            };
            let mut ctx = keyed_ctx!(self);
            let (op, out) = (&mut self.op, &mut self.out);
            contained(|| op.on_timer(ts, domain, &mut ctx, out))?;
        }
    }
}

impl<K: StateKey, I: Data, O: Data, Op: KeyedOperator<K, I, O>> TaskLogic
    for KeyedLogic<K, I, O, Op>
{
    fn open(&mut self) -> Result<()> {
        if !self.restore.is_empty() {
            let restore = std::mem::take(&mut self.restore);
            self.keyed.restore(restore.iter())?;
        }
        self.timers = Some(TimerService::open(&mut self.keyed)?);
        self.processing_time = crate::runtime::time::processing_time();
        self.side.open(&mut self.operator)?;
        let mut ctx = keyed_ctx!(self);
        self.op.open(&mut ctx)?;
        self.side.opened();
        Ok(())
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()> {
        // One clock reading per batch: `current_processing_time` is that of the batch.
        self.processing_time = crate::runtime::time::processing_time();
        let mut ctx = keyed_ctx!(self);
        for (i, r) in downcast::<I>(batch)?.into_iter().enumerate() {
            let kept = self.dead_letter.as_ref().map(|_| r.clone());
            let (op, out, key) = (&mut self.op, &mut self.out, &self.key);
            let result = contained(|| {
                ctx.keyed.set_current_key(key(&r))?;
                op.process(r, &mut ctx, out)
            });
            if let Err(e) = result {
                route_failure(self.dead_letter.as_ref(), ctx.side, kept, e, origin, i)?;
            }
        }
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<()> {
        let mut ctx = keyed_ctx!(self);
        self.op.end_of_input(&mut ctx, &mut self.out)
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        self.side.pre_commit(checkpoint, &mut self.operator)?;
        let keyed = self.keyed.capture();
        let operator = self.operator.snapshot()?;
        let range = self.keyed.key_group_range();
        let mut states = self.keyed.descriptors();
        states.extend(self.operator.descriptors());
        Ok(Capture {
            states,
            // The keyed state's parts go to the storage as they are, never joined into the
            // buffer: each key group's encoded bytes are copied once, by the storage.
            encode: Box::new(move |storage, id, task, _buf| {
                let parts = keyed.task_snapshot_parts(&operator)?;
                let parts: Vec<&[u8]> = parts.iter().collect();
                let handle = storage.write_task_state_parts(id, task, &parts)?;
                Ok((handle, keyed.deferred_encoding()))
            }),
            key_groups: Some(range),
            sources: Vec::new(),
        })
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        self.side.commit(checkpoint)?;
        let mut ctx = keyed_ctx!(self);
        self.op.checkpoint_complete(checkpoint, &mut ctx)
    }

    fn on_watermark(&mut self, wm: Timestamp) -> Result<()> {
        self.watermark = wm;
        self.fire(TimeDomain::EventTime, wm)
    }

    fn on_processing_time(&mut self, now: Timestamp) -> Result<()> {
        self.processing_time = now;
        self.fire(TimeDomain::ProcessingTime, now)
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.out.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.out.has_buffered()
    }

    fn state_entries(&self) -> Option<u64> {
        Some(self.keyed.entries() as u64)
    }
}
