//! The checkpoint protocol between the job master and the checkpoint coordinator actor: the
//! messages each way, a task's acknowledgement as the coordinator keeps it, and the clock the
//! protocol runs on. A leaf of `checkpoint`: the runtime's messages re-export these, so the
//! coordinator actor (here, next to its pure core) needs nothing of the runtime.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::stats::CheckpointStats;
use super::{CheckpointId, StateDescriptor, StateHandle};
use crate::error::Error;
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
    /// The final checkpoint; `end_input` when it ends the input (not a stop).
    RequestFinal {
        end_input: bool,
    },
    /// Take a savepoint next (and until one completes).
    RequestSavepoint,
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
        savepoint: bool,
    },
    Completed {
        checkpoint: CheckpointId,
        is_final: bool,
        /// For a savepoint: where it is.
        savepoint: Option<String>,
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
    /// The states the task has registered.
    pub(crate) states: Vec<StateDescriptor>,
    pub(crate) alignment: Duration,
    pub(crate) capture: Duration,
    /// The keyed state the task encoded itself for this checkpoint.
    pub(crate) task_encoding: crate::state::DeferredEncoding,
    pub(crate) acked_at: Instant,
}
