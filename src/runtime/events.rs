//! Lifecycle events of a job, for the embedding application and for traces.

use std::time::Duration;

use actix::Message;

use crate::checkpoint::{CheckpointId, TaskId};

/// Something that happened to a job. A job sends every event to the `Recipient` given to
/// [`JobBuilder::events`](super::JobBuilder::events), logs it with `tracing`, and lists it in
/// its [`JobReport`](super::JobReport).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Message)]
#[rtype(result = "()")]
pub enum JobEvent {
    /// The job started, restored from a checkpoint or fresh.
    Started {
        /// The checkpoint restored, if any.
        restored_from: Option<CheckpointId>,
    },
    /// A checkpoint's manifest was written.
    CheckpointCompleted {
        /// The checkpoint.
        checkpoint: CheckpointId,
    },
    /// A checkpoint was given up.
    CheckpointAborted {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Why.
        reason: String,
    },
    /// A task failed (a panic, an error, a kill).
    TaskFailed {
        /// The task.
        task: TaskId,
        /// What happened.
        error: String,
    },
    /// The chaos monkey killed an actor.
    ChaosKill {
        /// The kill's number, from 1.
        kill: u32,
        /// The task killed, or `None` for the checkpoint coordinator.
        task: Option<TaskId>,
        /// How ("panic in user code", "stop from outside", or the moment it fired at).
        how: String,
    },
    /// A failover region is being restarted.
    Restarting {
        /// The region's tasks.
        tasks: Vec<TaskId>,
        /// The restart's number.
        attempt: u32,
        /// The delay before the restart.
        delay: Duration,
    },
    /// A failover region was restored and runs again.
    Restored {
        /// The region's tasks.
        tasks: Vec<TaskId>,
        /// The checkpoint they restored, or `None` for a start from the beginning.
        checkpoint: Option<CheckpointId>,
    },
    /// The checkpoint coordinator failed and was restarted.
    CoordinatorRestarted {
        /// The latest complete checkpoint it resumed after.
        resumed_after: Option<CheckpointId>,
    },
    /// The job ended with an error.
    JobFailed {
        /// The error.
        error: String,
    },
    /// The job ended successfully.
    JobFinished,
}
