//! [`CheckpointStats`]: the figures the coordinator reports for every completed checkpoint.

use std::time::{Duration, SystemTime};

use super::{CheckpointId, TaskId};

/// Figures of one completed checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointStats {
    /// The checkpoint.
    pub id: CheckpointId,
    /// When it was triggered.
    pub triggered_at: SystemTime,
    /// From trigger to the manifest written.
    pub duration: Duration,
    /// Bytes of state written.
    pub bytes: u64,
    /// The longest barrier alignment of any task.
    pub max_alignment: Duration,
    /// The longest time a task spent capturing its state (not processing records).
    pub max_capture: Duration,
    /// The most time one keyed task spent encoding captured key groups itself, before its
    /// first write to each (see [`KeyedStateBackend::capture`](crate::state::KeyedStateBackend::capture)),
    /// spread over the records it processed while the checkpoint was being written.
    pub max_task_encoding: Duration,
    /// The longest single such encoding (one key group): the longest pause it caused.
    pub max_task_encoding_pause: Duration,
    /// Per task: time from the trigger to its acknowledgement.
    pub ack_latency: Vec<(TaskId, Duration)>,
    /// True for the final checkpoint of a bounded job or a graceful stop.
    pub is_final: bool,
}
