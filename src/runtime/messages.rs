//! The messages the runtime's actors exchange. The checkpoint protocol's messages
//! ([`ToCoordinator`], [`FromCoordinator`], [`AckInfo`]) and its clock ([`now`]) live with the
//! coordinator in `checkpoint::protocol` and are re-exported here.
//!
//! A leaf of `runtime`: the job master, the checkpoint coordinator actor, the task actors and
//! the job handle all import it, and reach each other through `Recipient`s of these messages
//! (or the `Addr` of an actor they create), so none imports another's actor type: no import
//! cycle among them. Directions: task → master [`TaskEvent`]; master → coordinator
//! [`ToCoordinator`]; coordinator → master [`FromCoordinator`]; handle → job root → master
//! [`Command`]; master → job root [`MasterNote`]; job root → master [`Strike`]; master → task
//! [`Trigger`], [`Complete`], [`InjectPanic`], [`Shutdown`].

use actix::prelude::*;

use super::events::JobEnd;
use crate::chaos::Kill;
pub(crate) use crate::checkpoint::protocol::{now, AckInfo, FromCoordinator, ToCoordinator};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};

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
    /// Take a savepoint (and with `stop`, stop the job with it as its final checkpoint). The
    /// root keeps `reply` in the job's ledger and passes the command on without it.
    Savepoint {
        stop: bool,
        reply: Option<tokio::sync::oneshot::Sender<Result<super::events::Savepoint>>>,
    },
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
    /// A savepoint: its barrier aligns whatever the checkpoint mode.
    pub(crate) savepoint: bool,
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

/// Master → task: a chaos kill: stop the application actor the task's sink hosts.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct KillHosted;

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
