//! What every task logic shares: the [`TaskLogic`] trait the task actor calls, what a logic is
//! built from ([`LogicParams`], [`OutputSpec`], [`EdgeKind`], [`RestoreState`]), what it captures
//! at a barrier ([`Capture`]), and the helpers that build its output collector, unpack a batch
//! and capture operator state.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::checkpoint::{CheckpointId, CheckpointStorage, StateHandle, TaskId};
use crate::codec;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId};
use crate::runtime::channel::{Collector, Envelope, Origin, OutputEdge, Route};
use crate::runtime::operator::{Data, TaskInfo};
use crate::runtime::time::{Timestamp, WatermarkStatus};
use crate::state::{
    redistribute, DeferredEncoding, KeyGroup, KeyGroupRange, KeyedSnapshot, OperatorSnapshot,
    OperatorStateBackend, TaskSnapshot,
};

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
    /// The states the task has registered (recorded in the manifest's graph).
    pub(crate) states: Vec<crate::state::StateDescriptor>,
}

/// An async call resolved: its number and its outcome (of the logic's own type).
pub(crate) struct Completion {
    pub(crate) seq: u64,
    pub(crate) outcome: Box<dyn Any + Send>,
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
    /// The next capture is for savepoint `checkpoint` (told to sources only).
    fn savepoint_next(&mut self, _checkpoint: CheckpointId) {}
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
    /// The receiver of the logic's async completions, taken once when the task actor is made
    /// (async operators only).
    fn take_completions(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Completion>> {
        None
    }
    /// An async call resolved.
    fn on_completion(&mut self, _c: Completion) -> Result<()> {
        Err(Error::Internal(
            "an async completion for a task without async calls".into(),
        ))
    }
    /// True while the task must read no input (its async calls fill its capacity).
    fn input_held(&self) -> bool {
        false
    }
    /// True while async calls are unfinished (the end of input waits for them).
    fn in_flight(&self) -> bool {
        false
    }
    /// An async operator keeps a watermark until the calls issued before it have emitted
    /// (true: kept, handed back by `release_watermarks`).
    fn hold_watermark(&mut self, _status: WatermarkStatus) -> bool {
        false
    }
    /// The kept watermarks that may go out now, in order.
    fn release_watermarks(&mut self, _out: &mut Vec<WatermarkStatus>) {}
    /// The chaos monkey stops the application actor the task hosts; false if it hosts none.
    fn kill_hosted(&mut self) -> bool {
        false
    }
    /// Keyed state entries held, for the metrics (keyed logics only; read at a capture).
    fn state_entries(&self) -> Option<u64> {
        None
    }
    /// The logic as `Any`, for a query to downcast (actor operators only).
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
}

/// State handed to a task at start: from the checkpoint restored, or empty.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestoreState {
    /// Every keyed snapshot of the vertex in the checkpoint (a task takes its own groups).
    pub(crate) keyed: Arc<Vec<KeyedSnapshot>>,
    /// This task's operator state, redistributed for the current parallelism.
    pub(crate) operator: OperatorSnapshot,
    /// The vertex had state in the checkpoint restored (false: it starts fresh, a source at
    /// its log's start, even though the job restored a checkpoint).
    pub(crate) found: bool,
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
                found: false,
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
    pub(crate) counters: Arc<crate::runtime::metrics::TaskCounters>,
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

pub(super) fn downcast<T: 'static>(batch: Box<dyn Any + Send>) -> Result<Vec<T>> {
    batch.downcast::<Vec<T>>().map(|b| *b).map_err(|_| {
        Error::Internal(format!(
            "a channel delivered records that are not {}",
            std::any::type_name::<T>()
        ))
    })
}

pub(super) fn operator_capture(state: &OperatorStateBackend) -> Result<Capture> {
    let operator = state.snapshot()?;
    let states = state.descriptors();
    Ok(Capture {
        states,
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
