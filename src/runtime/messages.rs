//! The messages the runtime's actors exchange, and the clock their protocol runs on.
//!
//! A leaf of `runtime`: the job master, the checkpoint coordinator actor, the task actors and
//! the job handle all import it, and reach each other through `Recipient`s of these messages
//! (or the `Addr` of an actor they create), so none imports another's actor type: no import
//! cycle among them. Directions: task → master [`TaskEvent`]; master → coordinator
//! [`ToCoordinator`]; coordinator → master [`FromCoordinator`]; handle → job root → master
//! [`Command`]; master → job root [`MasterNote`]; job root → master [`Strike`]; master → task
//! [`Trigger`], [`Complete`], [`InjectPanic`], [`Shutdown`].

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::events::JobEnd;
use super::metrics::CheckpointStats;
use crate::chaos::Kill;
use crate::checkpoint::{CheckpointId, StateHandle};
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId};
use crate::state::KeyGroupRange;

/// The time the protocol uses: tokio's clock, so a paused test clock drives it too.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Master → coordinator.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum ToCoordinator {
    Ack(AckInfo),
    /// A task could not take part. `error` is `Some` when the checkpoint itself failed (the
    /// task could not write its state): that counts against the tolerance; `None` when the
    /// cause lies outside it (a source that is not running).
    Decline {
        checkpoint: CheckpointId,
        reason: String,
        error: Option<Error>,
    },
    RequestNow,
    RequestFinal,
    CancelFinal,
    Rearm,
    /// Trigger nothing while `true` (a failover region is down: its tasks could not take part).
    Hold(bool),
    AbortInFlight {
        reason: String,
    },
}

/// Coordinator → master.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum FromCoordinator {
    Triggered {
        checkpoint: CheckpointId,
        is_final: bool,
    },
    Completed {
        checkpoint: CheckpointId,
        is_final: bool,
        stats: CheckpointStats,
    },
    Aborted {
        checkpoint: CheckpointId,
        reason: String,
    },
    /// More checkpoints failed in a row than the job tolerates: the job fails with `error`.
    Failing { error: Error },
}

/// A task's acknowledgement of a checkpoint: its state is durable.
#[derive(Debug)]
pub(crate) struct AckInfo {
    pub(crate) checkpoint: CheckpointId,
    pub(crate) task: usize,
    pub(crate) state: StateHandle,
    pub(crate) key_groups: Option<KeyGroupRange>,
    pub(crate) sources: Vec<(PartitionId, LogOffset)>,
    pub(crate) alignment: Duration,
    pub(crate) capture: Duration,
    /// The keyed state the task encoded itself for this checkpoint.
    pub(crate) task_encoding: crate::state::DeferredEncoding,
    pub(crate) acked_at: Instant,
}

/// What a task reports.
#[derive(Debug)]
pub(crate) enum EventKind {
    Ack(AckInfo),
    /// The task could not write its state for `checkpoint`.
    Decline {
        checkpoint: CheckpointId,
        error: Error,
    },
    Failed {
        error: Error,
    },
    SourceAtEnd,
    Finished,
    FirstRecord,
}

/// A report from one incarnation of a task.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TaskEvent {
    pub(crate) task: usize,
    pub(crate) incarnation: u32,
    pub(crate) kind: EventKind,
}

/// Requests from a [`JobHandle`](super::JobHandle).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum Command {
    TriggerCheckpoint,
    Stop,
    Cancel,
}

/// Master → source: inject a barrier.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Trigger {
    pub(crate) checkpoint: CheckpointId,
    /// The final checkpoint: the source reads nothing after its barrier.
    pub(crate) is_final: bool,
    /// With `is_final`: end the input first (`End` before the barrier, so downstream tasks run
    /// their end-of-input hooks). False for a stop, which ends no input.
    pub(crate) end_input: bool,
}

/// Master → task: a checkpoint is complete. Replies whether the task handled it.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub(crate) struct Complete(pub(crate) CheckpointId);

/// Master → task: a chaos kill: panic inside user code now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct InjectPanic {
    pub(crate) kill: u32,
}

/// Master → task: stop now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// Master → job root: what one incarnation of the job master reports to its parent.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct MasterNote {
    /// The master's incarnation (from 1): notes of a replaced master are ignored.
    pub(crate) incarnation: u32,
    pub(crate) kind: MasterNoteKind,
}

/// What a [`MasterNote`] says.
#[derive(Debug)]
pub(crate) enum MasterNoteKind {
    /// Every task of the job is registered: the job runs (chaos may start killing).
    Up,
    /// The job ended with `result`. The master has closed the job's write fence, told every
    /// actor to stop, and stops itself; the root waits for the fence to drain and reports.
    Ended(Result<JobEnd>),
}

/// Job root → master: carry out kill number `number` of the chaos monkey, with `pick` (a draw
/// of the monkey's seed) choosing the target task among the running tasks of `vertices` (of
/// every vertex when empty).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Strike {
    pub(crate) kill: Kill,
    pub(crate) number: u32,
    pub(crate) pick: u64,
    pub(crate) vertices: Vec<String>,
}
