//! What a task does with its records, behind one object-safe trait so the task actor need not
//! know the record types: sources, (keyed) operators and sinks each implement [`TaskLogic`].
//!
//! A logic value owns the task's state (keyed and operator state, sink transactions, source
//! offsets) and its output [`Collector`]. The task actor calls it for records, barriers
//! (`capture`), end of input and checkpoint completion, inside a panic boundary.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

use super::channel::{Collector, Envelope, Origin, OutputEdge, Route};
use super::operator::{Data, KeyedContext, KeyedOperator, Operator, OperatorContext, TaskInfo};
use crate::checkpoint::{CheckpointId, CheckpointStorage, StateHandle, TaskId};
use crate::codec;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::sink::TwoPhaseCommitSink;
use crate::state::{
    redistribute, DeferredEncoding, KeyGroup, KeyGroupRange, KeyedSnapshot, KeyedStateBackend,
    OperatorListState, OperatorSnapshot, OperatorStateBackend, Redistribution, StateKey,
    TaskSnapshot,
};
use crate::time::{TimeDomain, TimerService, Timestamp, WatermarkStatus, WatermarkStrategy};

/// Encodes a captured state (as a [`TaskSnapshot`]) and stores it as the task's state of a
/// checkpoint, on any thread, using the buffer given if it needs one; returns the stored
/// state's handle and how much of the encoding the task did itself meanwhile (keyed state).
pub(crate) type EncodeSnapshot = Box<
    dyn FnOnce(
            &dyn CheckpointStorage,
            CheckpointId,
            &TaskId,
            &mut Vec<u8>,
        ) -> Result<(StateHandle, DeferredEncoding)>
        + Send,
>;

/// A task's state as captured at a barrier, and how to encode it.
pub(crate) struct Capture {
    pub(crate) encode: EncodeSnapshot,
    pub(crate) key_groups: Option<KeyGroupRange>,
    pub(crate) sources: Vec<(PartitionId, LogOffset)>,
}

/// What one poll of a source produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourcePoll {
    /// Records were read and emitted.
    Produced(usize),
    /// Nothing new in the log (unbounded source): poll again later.
    Idle,
    /// Every assigned partition reached its stop offset (bounded source).
    AtEnd,
}

pub(crate) trait TaskLogic: Send {
    fn open(&mut self) -> Result<()>;
    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()>;
    fn end_of_input(&mut self) -> Result<()>;
    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture>;
    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()>;
    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>);
    fn has_buffered(&self) -> bool;
    fn poll_source(&mut self, _max: usize) -> Result<SourcePoll> {
        Err(Error::Internal(
            "poll_source called on a task that is not a source".into(),
        ))
    }
    /// The task's input watermark advanced to `wm`: fire event-time timers up to it.
    fn on_watermark(&mut self, _wm: Timestamp) -> Result<()> {
        Ok(())
    }
    /// The processing-time clock reads `now`: fire processing-time timers up to it.
    fn on_processing_time(&mut self, _now: Timestamp) -> Result<()> {
        Ok(())
    }
    /// For an event-time source: the watermark statuses to send now, if any changed.
    fn source_watermark(&mut self, _now: std::time::Instant, _out: &mut Vec<WatermarkStatus>) {}
}

/// State handed to a task at start: from the checkpoint restored, or empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestoreState {
    /// Every keyed snapshot of the vertex in the checkpoint (a task takes its own groups).
    pub(crate) keyed: Arc<Vec<KeyedSnapshot>>,
    /// This task's operator state, redistributed for the current parallelism.
    pub(crate) operator: OperatorSnapshot,
}

impl RestoreState {
    /// Splits the old tasks' operator snapshots over `parallelism` new tasks.
    pub(crate) fn for_vertex(
        keyed: Vec<KeyedSnapshot>,
        operator: &[OperatorSnapshot],
        parallelism: u32,
    ) -> Result<Vec<RestoreState>> {
        let keyed = Arc::new(keyed);
        let ops = if operator.is_empty() {
            vec![OperatorSnapshot::default(); parallelism as usize]
        } else if operator.len() == parallelism as usize {
            // Same parallelism: each task gets its own state back. (Redistributing a split
            // list evenly could move source partitions between tasks of different failover
            // regions, and a region restart would then read a partition twice.)
            operator.to_vec()
        } else {
            redistribute(operator, parallelism)?
        };
        Ok(ops
            .into_iter()
            .map(|operator| RestoreState {
                keyed: Arc::clone(&keyed),
                operator,
            })
            .collect())
    }
}

/// How one output edge of a task ships its records.
#[derive(Clone)]
pub(crate) struct OutputSpec {
    pub(crate) kind: EdgeKind,
    pub(crate) channels: Vec<usize>,
    /// For hash edges: an `Arc<dyn Fn(&T) -> KeyGroup + Send + Sync>` for the producer's `T`.
    pub(crate) key_group: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for OutputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSpec")
            .field("kind", &self.kind)
            .field("channels", &self.channels)
            .finish()
    }
}

/// The shipping strategy of an edge, once resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    Forward,
    Rebalance,
    Broadcast,
    Hash,
}

/// Everything a logic factory needs to build one task's logic.
pub(crate) struct LogicParams {
    pub(crate) counters: Arc<super::metrics::TaskCounters>,
    pub(crate) watermark_interval: std::time::Duration,
    pub(crate) idle_timeout: std::time::Duration,
    pub(crate) info: TaskInfo,
    pub(crate) outputs: Vec<OutputSpec>,
    pub(crate) restore: RestoreState,
    pub(crate) batch_size: usize,
    pub(crate) first_epoch: CheckpointId,
    /// For bounded sources: the offset to stop at, per partition.
    pub(crate) stop_offsets: Option<Arc<HashMap<PartitionId, LogOffset>>>,
}

pub(crate) type KeyGroupFn<T> = Arc<dyn Fn(&T) -> KeyGroup + Send + Sync>;

pub(crate) fn collector<T: Data>(
    outputs: &[OutputSpec],
    batch_size: usize,
    max_parallelism: u32,
) -> Result<Collector<T>> {
    let mut edges = Vec::with_capacity(outputs.len());
    for o in outputs {
        let route = match o.kind {
            EdgeKind::Forward => Route::Forward,
            EdgeKind::Rebalance => Route::Rebalance { next: 0 },
            EdgeKind::Broadcast => Route::Broadcast,
            EdgeKind::Hash => {
                let f = o
                    .key_group
                    .as_ref()
                    .and_then(|a| a.downcast_ref::<KeyGroupFn<T>>())
                    .ok_or_else(|| {
                        Error::Internal(
                            "hash edge without a key function of the stream's type".into(),
                        )
                    })?;
                Route::Hash {
                    key_group: Arc::clone(f),
                    max_parallelism,
                }
            }
        };
        edges.push(OutputEdge {
            route,
            channels: o.channels.clone(),
            buffers: o.channels.iter().map(|_| Vec::new()).collect(),
            origin: None,
            mixed: false,
        });
    }
    Ok(Collector::new(edges, batch_size))
}

fn downcast<T: 'static>(batch: Box<dyn Any + Send>) -> Result<Vec<T>> {
    batch.downcast::<Vec<T>>().map(|b| *b).map_err(|_| {
        Error::Internal(format!(
            "a channel delivered records that are not {}",
            std::any::type_name::<T>()
        ))
    })
}

/// A record that failed, as written to a dead-letter log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The task whose operator failed on it.
    pub task: crate::checkpoint::TaskId,
    /// The error (or panic message).
    pub error: String,
    /// Where the record was read, when known (records a source sends on a forward edge).
    pub position: Option<(PartitionId, LogOffset)>,
    /// The record, MessagePack-encoded.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

/// Encodes a record for the dead-letter log.
pub(crate) type RecordEncoder<T> = Arc<dyn Fn(&T) -> Result<Vec<u8>> + Send + Sync>;

/// Where an operator sends the records it fails on, instead of failing its task.
pub(crate) struct DeadLetterSpec<T> {
    pub(crate) log: Arc<dyn ReplayableLog>,
    pub(crate) encode: RecordEncoder<T>,
}

impl<T> Clone for DeadLetterSpec<T> {
    fn clone(&self) -> Self {
        DeadLetterSpec {
            log: Arc::clone(&self.log),
            encode: Arc::clone(&self.encode),
        }
    }
}

/// Runs user code for one record inside a panic boundary.
fn contained(f: impl FnOnce() -> Result<()>) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(Error::Panic {
            message: payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".into()),
        }),
    }
}

/// The log position of the `i`-th record of a batch read at `origin`.
fn position(origin: Option<Origin>, i: usize) -> Option<(PartitionId, LogOffset)> {
    origin.map(|(p, o)| (p, LogOffset(o.0 + i as u64)))
}

/// Names the failing record's position in an error, when it is known.
fn at_record(error: Error, origin: Option<Origin>, i: usize) -> Error {
    match position(origin, i) {
        Some((partition, offset)) => Error::AtRecord {
            partition,
            offset,
            source: Box::new(error),
        },
        None => error,
    }
}

/// Writes a failed record to the dead-letter log.
fn dead_letter<T>(
    spec: &DeadLetterSpec<T>,
    task: &crate::checkpoint::TaskId,
    record: &T,
    error: &Error,
    at: Option<(PartitionId, LogOffset)>,
) -> Result<()> {
    let letter = DeadLetter {
        task: task.clone(),
        error: error.to_string(),
        position: at,
        record: (spec.encode)(record)?,
    };
    let partitions = spec.log.partitions().max(1);
    spec.log.append(
        PartitionId(task.index % partitions),
        &codec::encode(&letter, "dead letter")?,
    )?;
    tracing::warn!(task = %task, error = %error, position = ?at, "record sent to the dead-letter log");
    Ok(())
}

/// Routes a record whose processing failed: to the dead-letter log when one is configured (the
/// record was then kept), otherwise into the task's error, naming the record's log position.
fn route_failure<T>(
    spec: Option<&DeadLetterSpec<T>>,
    task: &crate::checkpoint::TaskId,
    kept: Option<T>,
    error: Error,
    origin: Option<Origin>,
    i: usize,
) -> Result<()> {
    match (spec, kept) {
        (Some(spec), Some(record)) => dead_letter(spec, task, &record, &error, position(origin, i)),
        _ => Err(at_record(error, origin, i)),
    }
}

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
        }
    };
}

fn operator_capture(state: &OperatorStateBackend) -> Result<Capture> {
    let operator = state.snapshot()?;
    Ok(Capture {
        encode: Box::new(move |storage, id, task, out| {
            let snapshot = TaskSnapshot {
                keyed: None,
                operator,
            };
            codec::encode_into(&snapshot, out, "task snapshot")?;
            let handle = storage.write_task_state(id, task, out)?;
            Ok((handle, DeferredEncoding::default()))
        }),
        key_groups: None,
        sources: Vec::new(),
    })
}

/// A non-keyed operator task.
pub(crate) struct OperatorLogic<I, O, Op> {
    op: Op,
    dead_letter: Option<DeadLetterSpec<I>>,
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
        Ok(OperatorLogic {
            dead_letter,
            out: collector(&p.outputs, p.batch_size, p.info.max_parallelism)?,
            state: OperatorStateBackend::restored(p.restore.operator),
            info: p.info,
            op,
            _i: std::marker::PhantomData,
        })
    }
}

impl<I: Data, O: Data, Op: Operator<I, O>> TaskLogic for OperatorLogic<I, O, Op> {
    fn open(&mut self) -> Result<()> {
        self.op.open(&mut op_ctx!(self))
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()> {
        let mut ctx = op_ctx!(self);
        for (i, r) in downcast::<I>(batch)?.into_iter().enumerate() {
            let kept = self.dead_letter.as_ref().map(|_| r.clone());
            let (op, out) = (&mut self.op, &mut self.out);
            if let Err(e) = contained(|| op.process(r, &mut ctx, out)) {
                route_failure(
                    self.dead_letter.as_ref(),
                    &ctx.info.task,
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

    fn capture(&mut self, _checkpoint: CheckpointId) -> Result<Capture> {
        operator_capture(&self.state)
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        self.op.checkpoint_complete(checkpoint, &mut op_ctx!(self))
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.out.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.out.has_buffered()
    }
}

/// A keyed operator task.
pub(crate) struct KeyedLogic<K: StateKey, I, O, Op> {
    op: Op,
    dead_letter: Option<DeadLetterSpec<I>>,
    timers: Option<TimerService<K>>,
    watermark: Timestamp,
    processing_time: Timestamp,
    counters: Arc<super::metrics::TaskCounters>,
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
        Ok(KeyedLogic {
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
        self.processing_time = crate::time::processing_time();
        let mut ctx = keyed_ctx!(self);
        self.op.open(&mut ctx)
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, origin: Option<Origin>) -> Result<()> {
        // One clock reading per batch: `current_processing_time` is that of the batch.
        self.processing_time = crate::time::processing_time();
        let mut ctx = keyed_ctx!(self);
        for (i, r) in downcast::<I>(batch)?.into_iter().enumerate() {
            let kept = self.dead_letter.as_ref().map(|_| r.clone());
            let (op, out, key) = (&mut self.op, &mut self.out, &self.key);
            let result = contained(|| {
                ctx.keyed.set_current_key(key(&r))?;
                op.process(r, &mut ctx, out)
            });
            if let Err(e) = result {
                route_failure(
                    self.dead_letter.as_ref(),
                    &ctx.info.task,
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
        let mut ctx = keyed_ctx!(self);
        self.op.end_of_input(&mut ctx, &mut self.out)
    }

    fn capture(&mut self, _checkpoint: CheckpointId) -> Result<Capture> {
        let keyed = self.keyed.capture();
        let operator = self.operator.snapshot()?;
        let range = self.keyed.key_group_range();
        Ok(Capture {
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
}

const SINK_TXNS: &str = "snapflow.sink-transactions";
const SOURCE_OFFSETS: &str = "snapflow.source-offsets";

/// A sink task driving a [`TwoPhaseCommitSink`].
pub(crate) struct SinkLogic<T, S: TwoPhaseCommitSink<T>> {
    sink: S,
    info: TaskInfo,
    state: OperatorStateBackend,
    txns: Option<OperatorListState<(u32, u64, S::Txn)>>,
    /// Pre-committed transactions not yet committed, oldest first.
    pending: Vec<(u64, S::Txn)>,
    epoch: CheckpointId,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Data, S: TwoPhaseCommitSink<T>> SinkLogic<T, S> {
    pub(crate) fn new(sink: S, p: LogicParams) -> Result<Self> {
        Ok(SinkLogic {
            sink,
            state: OperatorStateBackend::restored(p.restore.operator),
            info: p.info,
            txns: None,
            pending: Vec::new(),
            epoch: p.first_epoch,
            _t: std::marker::PhantomData,
        })
    }
}

impl<T: Data, S: TwoPhaseCommitSink<T>> SinkLogic<T, S> {
    fn save_pending(&mut self) -> Result<()> {
        if let Some(list) = &self.txns {
            let me = self.info.task.index;
            let v = self
                .pending
                .iter()
                .map(|(e, t)| (me, *e, t.clone()))
                .collect();
            list.update(&mut self.state, v)?;
        }
        Ok(())
    }
}

impl<T: Data, S: TwoPhaseCommitSink<T>> TaskLogic for SinkLogic<T, S> {
    fn open(&mut self) -> Result<()> {
        self.sink.open(&self.info)?;
        // Union redistribution: every task sees every pre-committed transaction of the
        // checkpoint, so none is lost when the sink's parallelism changes; commits are
        // idempotent.
        let txns = self
            .state
            .list_state::<(u32, u64, S::Txn)>(SINK_TXNS, Redistribution::Union)?;
        let restored = txns.clear(&mut self.state)?;
        // Every task sees every transaction; each is recovered by exactly one task: the one
        // whose index its origin task maps to (the same task when the parallelism is unchanged).
        let (p, me) = (self.info.parallelism, self.info.task.index);
        let committed: Vec<S::Txn> = restored
            .into_iter()
            .filter(|(origin, _, _)| origin % p == me)
            .map(|(_, _, t)| t)
            .collect();
        self.sink.recover(&committed)?;
        self.txns = Some(txns);
        self.sink.begin(self.epoch)
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, _origin: Option<Origin>) -> Result<()> {
        for r in downcast::<T>(batch)? {
            self.sink.write(r)?;
        }
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<()> {
        Ok(())
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        // Barrier n closes the open epoch, whose records are those since the previous barrier.
        // Ids can skip (a checkpoint aborted by a region restart never reaches this task), so
        // the epoch takes the barrier's id.
        if checkpoint != self.epoch {
            tracing::debug!(task = %self.info.task, barrier = %checkpoint, open = %self.epoch, "sink epoch takes the barrier's id");
        }
        let txn = self.sink.pre_commit(checkpoint)?;
        self.pending.push((checkpoint.0, txn));
        self.save_pending()?;
        let capture = operator_capture(&self.state)?;
        self.epoch = CheckpointId(checkpoint.0 + 1);
        self.sink.begin(self.epoch)?;
        Ok(capture)
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let mut done = 0;
        for (epoch, txn) in &self.pending {
            if *epoch > checkpoint.0 {
                break;
            }
            self.sink.commit(txn)?;
            done += 1;
        }
        if done > 0 {
            self.pending.drain(..done);
            self.save_pending()?;
        }
        Ok(())
    }

    fn drain(&mut self, _all: bool, _out: &mut Vec<(usize, Envelope)>) {}

    fn has_buffered(&self) -> bool {
        false
    }
}

/// Decodes a log record into a stream record.
pub(crate) type Decoder<T> = Arc<dyn Fn(&[u8]) -> Result<T> + Send + Sync>;

/// How an event-time source reads timestamps and derives its watermark.
pub(crate) struct EventTimeSpec<T> {
    pub(crate) timestamp: Arc<dyn Fn(&T) -> Timestamp + Send + Sync>,
    pub(crate) strategy: WatermarkStrategy,
}

impl<T> Clone for EventTimeSpec<T> {
    fn clone(&self) -> Self {
        EventTimeSpec {
            timestamp: Arc::clone(&self.timestamp),
            strategy: self.strategy,
        }
    }
}

/// One log partition a source task reads.
#[derive(Debug, Clone, Copy)]
struct SourcePartition {
    id: PartitionId,
    next: LogOffset,
    stop: Option<LogOffset>,
    /// The largest event timestamp read so far (checkpointed).
    max_ts: Timestamp,
    /// Since when reading the partition found no new record (`None` while it has data). Only an
    /// empty read counts: a source held up by backpressure is not idle.
    empty_since: Option<std::time::Instant>,
}

impl SourcePartition {
    fn at_stop(&self) -> bool {
        self.stop.is_some_and(|s| self.next >= s)
    }
}

/// A source task reading its share of a log's partitions.
pub(crate) struct SourceLogic<T> {
    log: Arc<dyn ReplayableLog>,
    decode: Decoder<T>,
    info: TaskInfo,
    state: OperatorStateBackend,
    offsets_state: Option<OperatorListState<(u32, u64, i64)>>,
    partitions: Vec<SourcePartition>,
    stops: Option<Arc<HashMap<PartitionId, LogOffset>>>,
    next: usize,
    out: Collector<T>,
    event_time: Option<EventTimeSpec<T>>,
    watermark_interval: std::time::Duration,
    idle_timeout: std::time::Duration,
    /// The last watermark status sent, and when.
    sent: Option<WatermarkStatus>,
    sent_at: Option<std::time::Instant>,
    final_sent: bool,
}

impl<T: Data> SourceLogic<T> {
    pub(crate) fn new(
        log: Arc<dyn ReplayableLog>,
        decode: Decoder<T>,
        event_time: Option<EventTimeSpec<T>>,
        p: LogicParams,
    ) -> Result<Self> {
        Ok(SourceLogic {
            out: collector(&p.outputs, p.batch_size, p.info.max_parallelism)?,
            state: OperatorStateBackend::restored(p.restore.operator),
            offsets_state: None,
            partitions: Vec::new(),
            stops: p.stop_offsets,
            next: 0,
            info: p.info,
            log,
            decode,
            event_time,
            watermark_interval: p.watermark_interval,
            idle_timeout: p.idle_timeout,
            sent: None,
            sent_at: None,
            final_sent: false,
        })
    }

    fn save_offsets(&mut self) -> Result<()> {
        if let Some(list) = &self.offsets_state {
            let v = self
                .partitions
                .iter()
                .map(|p| (p.id.0, p.next.0, p.max_ts))
                .collect();
            list.update(&mut self.state, v)?;
        }
        Ok(())
    }
}

impl<T: Data> TaskLogic for SourceLogic<T> {
    fn open(&mut self) -> Result<()> {
        let list = self
            .state
            .list_state::<(u32, u64, i64)>(SOURCE_OFFSETS, Redistribution::Split)?;
        let restored = list.get(&self.state)?.to_vec();
        let stop = |p: PartitionId| self.stops.as_ref().and_then(|s| s.get(&p).copied());
        if restored.is_empty() && self.info.restored_from.is_none() {
            for p in 0..self.log.partitions() {
                if p % self.info.parallelism == self.info.task.index {
                    let id = PartitionId(p);
                    self.partitions.push(SourcePartition {
                        id,
                        next: self.log.start_offset(id)?,
                        stop: stop(id),
                        max_ts: Timestamp::MIN,
                        empty_since: None,
                    });
                }
            }
        } else {
            for (p, o, max_ts) in restored {
                let id = PartitionId(p);
                self.partitions.push(SourcePartition {
                    id,
                    next: LogOffset(o),
                    stop: stop(id),
                    max_ts,
                    empty_since: None,
                });
            }
        }
        self.offsets_state = Some(list);
        self.save_offsets()
    }

    fn on_records(&mut self, _batch: Box<dyn Any + Send>, _origin: Option<Origin>) -> Result<()> {
        Err(Error::Internal("a source task received records".into()))
    }

    fn end_of_input(&mut self) -> Result<()> {
        Ok(())
    }

    fn capture(&mut self, _checkpoint: CheckpointId) -> Result<Capture> {
        self.save_offsets()?;
        let mut c = operator_capture(&self.state)?;
        c.sources = self.partitions.iter().map(|p| (p.id, p.next)).collect();
        Ok(c)
    }

    fn checkpoint_complete(&mut self, _checkpoint: CheckpointId) -> Result<()> {
        Ok(())
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.out.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.out.has_buffered()
    }

    fn poll_source(&mut self, max: usize) -> Result<SourcePoll> {
        let n = self.partitions.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            let part = self.partitions[i];
            let want = match part.stop {
                Some(s) if part.next >= s => continue,
                Some(s) => ((s.0 - part.next.0) as usize).min(max),
                None => max,
            };
            let batch = self.log.read(part.id, part.next, want)?;
            if batch.is_empty() {
                let p = &mut self.partitions[i];
                p.empty_since.get_or_insert_with(super::messages::now);
                continue;
            }
            let pid = part.id;
            let mut max_ts = part.max_ts;
            self.out.set_origin(Some((pid, part.next)));
            for (o, bytes) in batch.iter() {
                let record = (self.decode)(bytes).map_err(|e| match e {
                    Error::Codec { op, reason, .. } => Error::Codec {
                        op,
                        what: format!("log record at partition {pid} offset {o}"),
                        reason,
                    },
                    other => other,
                })?;
                if let Some(et) = &self.event_time {
                    max_ts = max_ts.max((et.timestamp)(&record));
                }
                self.out.emit(record);
            }
            self.out.set_origin(None);
            let p = &mut self.partitions[i];
            p.next = batch.next_offset();
            p.max_ts = max_ts;
            p.empty_since = None;
            self.next = (i + 1) % n;
            return Ok(SourcePoll::Produced(batch.len()));
        }
        let all_stopped = self.partitions.iter().all(SourcePartition::at_stop);
        if all_stopped && self.stops.is_some() {
            Ok(SourcePoll::AtEnd)
        } else {
            Ok(SourcePoll::Idle)
        }
    }

    fn source_watermark(&mut self, now: std::time::Instant, out: &mut Vec<WatermarkStatus>) {
        let Some(et) = self.event_time.as_ref() else {
            return;
        };
        let strategy = et.strategy;
        let last_at = match self.sent {
            Some(WatermarkStatus::At(w)) => w,
            _ => Timestamp::MIN,
        };
        if self.stops.is_some() && self.partitions.iter().all(SourcePartition::at_stop) {
            // The input ended: nothing is late any more; let every timer fire.
            if !self.final_sent {
                self.final_sent = true;
                self.sent = Some(WatermarkStatus::At(Timestamp::MAX));
                out.push(WatermarkStatus::At(Timestamp::MAX));
            }
            return;
        }
        let idle_after = self.idle_timeout;
        let active = self
            .partitions
            .iter()
            .filter(|p| {
                !p.at_stop()
                    && p.empty_since
                        .is_none_or(|t| now.saturating_duration_since(t) < idle_after)
            })
            .map(|p| strategy.watermark(p.max_ts))
            .min();
        match active {
            None => {
                if self.sent == Some(WatermarkStatus::Idle) {
                    return;
                }
                // Going idle: first send how far every partition got (the final word on them
                // until data comes), then idle.
                let reached = self
                    .partitions
                    .iter()
                    .map(|p| strategy.watermark(p.max_ts))
                    .min()
                    .unwrap_or(Timestamp::MIN);
                if reached > last_at {
                    out.push(WatermarkStatus::At(reached));
                }
                out.push(WatermarkStatus::Idle);
                self.sent = Some(WatermarkStatus::Idle);
                self.sent_at = Some(now);
            }
            Some(w) => {
                let resumed = self.sent == Some(WatermarkStatus::Idle);
                let due = self
                    .sent_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.watermark_interval);
                if (resumed || (w > last_at && due)) && w > Timestamp::MIN {
                    self.sent = Some(WatermarkStatus::At(w.max(last_at)));
                    self.sent_at = Some(now);
                    out.push(WatermarkStatus::At(w.max(last_at)));
                }
            }
        }
    }
}
