//! Lifecycle events of a job, for the embedding application and for traces.

use std::time::Duration;

use actix::Message;

use crate::checkpoint::{CheckpointId, TaskId};

/// A complete savepoint ([`JobHandle::savepoint`](super::JobHandle::savepoint)): a checkpoint
/// that retention never removes and a job can start from
/// ([`StartFrom::Savepoint`](super::StartFrom::Savepoint)), here or (its directory copied)
/// anywhere else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Savepoint {
    /// Its checkpoint id.
    pub id: CheckpointId,
    /// Where it is ([`CheckpointStorage::location`](crate::CheckpointStorage::location)): its
    /// directory, for a [`LocalCheckpointStorage`](crate::LocalCheckpointStorage).
    pub location: String,
}

/// Why a job that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobEnd {
    /// Every source reached the end of its input (a bounded job): end-of-input ran, the final
    /// checkpoint completed and every sink committed it.
    InputEnded,
    /// [`JobHandle::stop`](super::JobHandle::stop): the final checkpoint completed and every sink committed it, without
    /// end-of-input (the input did not end). Resuming from that checkpoint continues where the
    /// job stopped.
    Stopped,
    /// [`JobHandle::cancel`](super::JobHandle::cancel): stopped at once, without a final checkpoint. Output of epochs
    /// whose checkpoint had not completed stays uncommitted, and is produced again by a job
    /// that resumes from the latest checkpoint.
    Cancelled,
}

/// Something that happened to a job. A job sends every event to the `Recipient` given to
/// [`JobBuilder::events`](super::JobBuilder::events), logs it with `tracing`, and lists it in
/// its [`JobReport`](super::JobReport).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Message)]
#[rtype(result = "()")]
pub enum JobEvent {
    /// The job started, restored from a checkpoint or fresh: every task runs. Also sent by a
    /// restarted supervisor once it has restored the job
    /// ([`SupervisorRestarting`](Self::SupervisorRestarting)).
    Started {
        /// The checkpoint restored, if any.
        restored_from: Option<CheckpointId>,
    },
    /// A checkpoint was triggered: its barriers are being injected at the sources.
    CheckpointTriggered {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// True for a final checkpoint (end of input, or a stop).
        is_final: bool,
    },
    /// A checkpoint's manifest was written.
    CheckpointCompleted {
        /// The checkpoint.
        checkpoint: CheckpointId,
    },
    /// A savepoint's manifest was written (a
    /// [`CheckpointCompleted`](Self::CheckpointCompleted) of the same id precedes it).
    SavepointCompleted {
        /// The savepoint.
        checkpoint: CheckpointId,
        /// Where it is.
        location: String,
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
    /// A failover region is being restarted (or, after an [`Escalated`](Self::Escalated), the
    /// whole job: then `tasks` lists every task and `attempt` counts full restarts).
    Restarting {
        /// The region's tasks.
        tasks: Vec<TaskId>,
        /// The restart's number.
        attempt: u32,
        /// The delay before the restart.
        delay: Duration,
    },
    /// A failover region spent its own restart budget and escalated to the job: the whole job
    /// restarts from the latest complete checkpoint (a [`Restarting`](Self::Restarting) of
    /// every task follows), or fails if the job's budget is spent too.
    Escalated {
        /// The region's tasks.
        tasks: Vec<TaskId>,
        /// Why the region gave up (its strategy's reason).
        reason: String,
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
        /// The largest checkpoint id in the storage (complete or not) when it restarted: its ids
        /// continue above it.
        resumed_after: Option<CheckpointId>,
    },
    /// The job's supervisor (its master actor) died and its parent restarts it: every task is
    /// stopped, and after `delay` (once every write of the dead supervisor's actors has ended)
    /// the whole job is restored from the latest complete checkpoint.
    SupervisorRestarting {
        /// How the supervisor ended.
        reason: String,
        /// The restart's number (from 1).
        attempt: u32,
        /// The wait before the restore.
        delay: Duration,
    },
    /// [`JobHandle::stop`](super::JobHandle::stop) was called: the final checkpoint follows.
    StopRequested,
    /// [`JobHandle::cancel`](super::JobHandle::cancel) was called: the job ends once every
    /// checkpoint write it started has ended.
    CancelRequested,
    /// The job ended with an error.
    JobFailed {
        /// The error.
        error: String,
    },
    /// The job ended without failing.
    JobFinished {
        /// Why.
        end: JobEnd,
    },
}
