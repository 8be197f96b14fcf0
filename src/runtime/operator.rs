//! The user's side of an operator: the [`Operator`] and [`KeyedOperator`] traits, their
//! contexts, and the closure operators behind `map`, `filter`, `flat_map` and `reduce`.
//!
//! Operator code never sees barriers, channels or actors: it is called once per record with a
//! context giving its state, and emits into a [`Collector`]. The runtime calls it inside a
//! panic boundary; a panic or an `Err` fails the task, never the thread or another task.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::channel::Collector;
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::side_output::SideOutputs;
use crate::runtime::time::{TimeDomain, TimerService, Timestamp};
use crate::state::{KeyedStateBackend, OperatorStateBackend, StateKey, StateValue, ValueState};

/// A type that can travel on a stream: records are cloned for broadcast edges and moved
/// between threads.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

pub use crate::ids::TaskInfo;

/// What a non-keyed operator can reach while it runs.
#[derive(Debug)]
pub struct OperatorContext<'a> {
    pub(crate) info: &'a TaskInfo,
    pub(crate) state: &'a mut OperatorStateBackend,
}

impl OperatorContext<'_> {
    /// The task running the operator.
    pub fn task(&self) -> &TaskInfo {
        self.info
    }

    /// The task's operator state (checkpointed with the task).
    pub fn state(&mut self) -> &mut OperatorStateBackend {
        self.state
    }
}

/// What a keyed operator can reach while it runs: keyed state scoped to the current key,
/// operator state, timers, and the task's clocks.
#[derive(Debug)]
pub struct KeyedContext<'a, K: StateKey> {
    pub(crate) info: &'a TaskInfo,
    pub(crate) keyed: &'a mut KeyedStateBackend<K>,
    pub(crate) operator: &'a mut OperatorStateBackend,
    pub(crate) timers: Option<&'a mut TimerService<K>>,
    pub(crate) watermark: Timestamp,
    pub(crate) processing_time: Timestamp,
    pub(crate) late: &'a AtomicU64,
    /// The task's side logs (late records), written exactly once.
    pub(crate) side: &'a mut SideOutputs,
}

impl<K: StateKey> KeyedContext<'_, K> {
    /// The task running the operator.
    pub fn task(&self) -> &TaskInfo {
        self.info
    }

    /// The key of the record being processed (none in `open` and `end_of_input`).
    pub fn current_key(&self) -> Option<&K> {
        self.keyed.current_key()
    }

    /// The task's keyed state; handles read and write the current key's slot.
    pub fn state(&mut self) -> &mut KeyedStateBackend<K> {
        self.keyed
    }

    /// The task's operator state.
    pub fn operator_state(&mut self) -> &mut OperatorStateBackend {
        self.operator
    }

    /// The task's event-time watermark: no record with a timestamp at or below it is expected
    /// any more (`i64::MIN` before the first watermark).
    pub fn current_watermark(&self) -> Timestamp {
        self.watermark
    }

    /// Processing time: wall-clock milliseconds since the Unix epoch, read when the task's
    /// current batch (or timer tick) began. It means the same in every process, so a
    /// processing-time timer restored from a checkpoint fires at the intended moment (at once
    /// if that has passed), and it never goes backwards within a process. It advances with
    /// tokio's clock, so a test that pauses that clock controls it.
    pub fn current_processing_time(&self) -> Timestamp {
        self.processing_time
    }

    fn timer(&mut self, domain: TimeDomain, ts: Timestamp, register: bool) -> Result<()> {
        let Some(timers) = self.timers.as_deref_mut() else {
            return Err(crate::Error::Config("timers are not available here".into()));
        };
        if register {
            timers.register(self.keyed, domain, ts)
        } else {
            timers.delete(self.keyed, domain, ts)
        }
    }

    /// Registers an event-time timer for the current key: `on_timer` runs once the watermark
    /// reaches `ts`. Registering the same timer again does nothing.
    pub fn register_event_timer(&mut self, ts: Timestamp) -> Result<()> {
        self.timer(TimeDomain::EventTime, ts, true)
    }

    /// Deletes the current key's event-time timer at `ts`.
    pub fn delete_event_timer(&mut self, ts: Timestamp) -> Result<()> {
        self.timer(TimeDomain::EventTime, ts, false)
    }

    /// Registers a processing-time timer for the current key.
    pub fn register_processing_timer(&mut self, ts: Timestamp) -> Result<()> {
        self.timer(TimeDomain::ProcessingTime, ts, true)
    }

    /// Deletes the current key's processing-time timer at `ts`.
    pub fn delete_processing_timer(&mut self, ts: Timestamp) -> Result<()> {
        self.timer(TimeDomain::ProcessingTime, ts, false)
    }

    /// Counts a record dropped for arriving too late (shown in the job's metrics).
    pub fn count_late_record(&mut self) {
        self.late.fetch_add(1, Ordering::Relaxed);
    }
}

/// A non-keyed operator: one instance per task, cloned from the one given to the builder.
pub trait Operator<I, O>: Send + 'static {
    /// Called once before the first record, after state is restored: register state here.
    fn open(&mut self, _ctx: &mut OperatorContext<'_>) -> Result<()> {
        Ok(())
    }

    /// Called for every record.
    fn process(
        &mut self,
        record: I,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<O>,
    ) -> Result<()>;

    /// Called once when every input has ended (bounded input), before the final checkpoint.
    fn end_of_input(
        &mut self,
        _ctx: &mut OperatorContext<'_>,
        _out: &mut Collector<O>,
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

/// A keyed operator: called with keyed state scoped to each record's key.
pub trait KeyedOperator<K: StateKey, I, O>: Send + 'static {
    /// Called once before the first record, after state is restored: register state here.
    fn open(&mut self, _ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        Ok(())
    }

    /// Called for every record, with the record's key as the current key.
    fn process(
        &mut self,
        record: I,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<O>,
    ) -> Result<()>;

    /// Called once when every input has ended (bounded input), before the final checkpoint.
    fn end_of_input(
        &mut self,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<O>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when a checkpoint this task took part in is complete.
    fn checkpoint_complete(
        &mut self,
        _checkpoint: CheckpointId,
        _ctx: &mut KeyedContext<'_, K>,
    ) -> Result<()> {
        Ok(())
    }

    /// Called when a timer of the current key fires: event-time timers in timestamp order as
    /// the watermark passes them, processing-time timers as the task's clock does.
    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Collector<O>,
    ) -> Result<()> {
        Ok(())
    }
}

/// The function of a `flat_map`.
pub(crate) type FlatMapFn<I, O> = Arc<dyn Fn(I, &mut Collector<O>) + Send + Sync>;

/// `flat_map`: any number of outputs per input (`map` and `filter` are flat maps too).
pub(crate) struct FlatMapOp<I, O>(pub(crate) FlatMapFn<I, O>);

impl<I, O> Clone for FlatMapOp<I, O> {
    fn clone(&self) -> Self {
        FlatMapOp(Arc::clone(&self.0))
    }
}

impl<I: Send + 'static, O: Clone + Send + 'static> Operator<I, O> for FlatMapOp<I, O> {
    fn process(
        &mut self,
        record: I,
        _ctx: &mut OperatorContext<'_>,
        out: &mut Collector<O>,
    ) -> Result<()> {
        (self.0)(record, out);
        Ok(())
    }
}

/// The name of [`ReduceOp`]'s value state: fixed, not the vertex's name, so that a vertex
/// renamed with its uid kept finds its state again.
pub(crate) const REDUCE_STATE: &str = "snapflow.reduce";

/// `key_by(..).reduce(..)`: folds each key's records into a value state
/// ([`REDUCE_STATE`]) and emits the new value after every record.
pub(crate) struct ReduceOp<K, T> {
    pub(crate) f: Arc<dyn Fn(T, T) -> T + Send + Sync>,
    pub(crate) state: Option<ValueState<T>>,
    pub(crate) _k: PhantomData<fn() -> K>,
}

impl<K, T> Clone for ReduceOp<K, T> {
    fn clone(&self) -> Self {
        ReduceOp {
            f: Arc::clone(&self.f),
            state: None,
            _k: PhantomData,
        }
    }
}

impl<K: StateKey, T: StateValue> KeyedOperator<K, T, T> for ReduceOp<K, T> {
    fn open(&mut self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        self.state = Some(ctx.state().value_state::<T>(REDUCE_STATE)?);
        Ok(())
    }

    fn process(
        &mut self,
        record: T,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<T>,
    ) -> Result<()> {
        let Some(state) = &self.state else {
            return Err(crate::Error::Config("reduce state used before open".into()));
        };
        let next = match state.clear(ctx.state())? {
            Some(acc) => (self.f)(acc, record),
            None => record,
        };
        state.set(ctx.state(), next.clone())?;
        out.emit(next);
        Ok(())
    }
}
