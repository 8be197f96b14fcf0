//! What the metrics keep of a job's history and shape: its graph, aborted checkpoints,
//! restarts, failures and the timeline of notable events. Plain public data, cloned into
//! every [`MetricsSnapshot`](super::MetricsSnapshot).

use std::time::SystemTime;

use crate::checkpoint::{CheckpointId, TaskId};
use crate::error::ErrorClass;
use crate::runtime::events::JobEvent;

/// How a vertex takes part in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VertexKind {
    /// Reads a log.
    Source,
    /// An operator without keyed state.
    Operator,
    /// A keyed operator.
    Keyed,
    /// Writes the job's output.
    Sink,
}

impl VertexKind {
    /// Its name in lower case ("source", "operator", "keyed", "sink").
    pub fn as_str(self) -> &'static str {
        match self {
            VertexKind::Source => "source",
            VertexKind::Operator => "operator",
            VertexKind::Keyed => "keyed",
            VertexKind::Sink => "sink",
        }
    }
}

/// How an edge ships records from its producer's tasks to its consumer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partitioning {
    /// Task i to task i.
    Forward,
    /// Round robin, a batch at a time.
    Rebalance,
    /// Every record to every consumer task.
    Broadcast,
    /// By the key group of the record's key.
    Hash,
}

impl Partitioning {
    /// Its name in lower case ("forward", "rebalance", "broadcast", "hash").
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioning::Forward => "forward",
            Partitioning::Rebalance => "rebalance",
            Partitioning::Broadcast => "broadcast",
            Partitioning::Hash => "hash",
        }
    }
}

/// One vertex of a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexInfo {
    /// Its name (tasks are named after it).
    pub name: String,
    /// Its stable uid (what checkpoints name it by).
    pub uid: String,
    /// Its number of tasks.
    pub parallelism: u32,
    /// Its role.
    pub kind: VertexKind,
}

/// One edge of a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeInfo {
    /// The producing vertex's name.
    pub from: String,
    /// The consuming vertex's name.
    pub to: String,
    /// How records are shipped.
    pub partitioning: Partitioning,
}

/// The shape of a running job: its vertices in the order they were added (so every edge
/// goes from an earlier vertex to a later one), and its edges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobGraph {
    /// The vertices.
    pub vertices: Vec<VertexInfo>,
    /// The edges.
    pub edges: Vec<EdgeInfo>,
}

/// A checkpoint that was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortedCheckpoint {
    /// The checkpoint.
    pub id: CheckpointId,
    /// When it was given up.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
}

/// A restart of part of the job, once its tasks run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRecord {
    /// When the restarted tasks were running again.
    pub at: SystemTime,
    /// The tasks restarted (a failover region, or every task).
    pub tasks: Vec<TaskId>,
    /// The checkpoint they restored, `None` for a start from the beginning of the input.
    pub restored_from: Option<CheckpointId>,
}

/// A failure of a task (or of the job's supervision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRecord {
    /// When it was reported.
    pub at: SystemTime,
    /// The task that failed, `None` for a failure outside the tasks.
    pub task: Option<TaskId>,
    /// What the supervisor made of it.
    pub class: ErrorClass,
    /// The error.
    pub message: String,
}

/// A notable job event (a failure, a chaos kill, a restart, a restore, an aborted checkpoint,
/// a stop) and when it happened. Completed checkpoints are in the checkpoint history instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// When.
    pub at: SystemTime,
    /// What.
    pub event: JobEvent,
}

/// Whether `event` belongs in the timeline.
pub(crate) fn is_notable(event: &JobEvent) -> bool {
    !matches!(
        event,
        JobEvent::CheckpointTriggered { .. } | JobEvent::CheckpointCompleted { .. }
    )
}

/// Failures counted by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCounts {
    /// Failures classed [`ErrorClass::Retryable`].
    pub retryable: u64,
    /// Failures classed [`ErrorClass::Restart`].
    pub restart: u64,
    /// Failures classed [`ErrorClass::Fatal`].
    pub fatal: u64,
}

impl FailureCounts {
    pub(crate) fn add(&mut self, class: ErrorClass) {
        match class {
            ErrorClass::Retryable => self.retryable += 1,
            ErrorClass::Restart => self.restart += 1,
            ErrorClass::Fatal => self.fatal += 1,
        }
    }

    /// Every failure counted.
    pub fn total(&self) -> u64 {
        self.retryable + self.restart + self.fatal
    }
}
