//! The identifiers every module shares: checkpoint, task, partition, offset and key group, and
//! [`TaskInfo`] (who a task is), which operators and sinks both see.
//!
//! A leaf: it imports nothing of the crate, so that `error.rs` (whose variants carry these ids)
//! and every module can import it without a cycle. Only the types, their formatting and their
//! infallible methods live here; constructors that validate (and so return the crate's
//! `Result`) are inherent impls in the module that owns the concept (`TaskId::new` in
//! `checkpoint`, `KeyGroupRange::for_task` in `state`). Each type is re-exported where users
//! find it (`checkpoint::CheckpointId`, `log::PartitionId`, `state::KeyGroup`, ...).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The number of a checkpoint. Checkpoint ids only grow within a job.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct CheckpointId(pub u64);

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One task: a vertex name and the task's index among the vertex's parallel instances.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    /// The vertex (operator) name; a safe file name component (see [`crate::validate_name`]).
    pub vertex: String,
    /// The task's index, from 0 to parallelism - 1.
    pub index: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.vertex, self.index)
    }
}

/// A partition of a log (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The position of a record in its partition: the first record appended has offset 0.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogOffset(pub u64);

impl LogOffset {
    /// The offset after this one.
    pub fn next(self) -> LogOffset {
        LogOffset(self.0 + 1)
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One key group: `stable_hash(key) % max_parallelism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyGroup(pub u16);

impl fmt::Display for KeyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A half-open range of key groups `[start, end)` owned by one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// The first key group of the range.
    pub start: u16,
    /// The key group after the last one of the range.
    pub end: u16,
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Who a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task's id (vertex name and index).
    pub task: TaskId,
    /// The vertex's parallelism.
    pub parallelism: u32,
    /// The job's number of key groups.
    pub max_parallelism: u32,
    /// The checkpoint the task's state was restored from, if any.
    pub restored_from: Option<CheckpointId>,
    /// How many times this task was started before in this run of the job (0 for the first).
    pub attempt: u32,
}
