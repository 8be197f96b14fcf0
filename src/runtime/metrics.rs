//! Job metrics, written by the actors and read by a [`JobHandle`](super::JobHandle) from any
//! thread.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use crate::checkpoint::TaskId;

pub use crate::checkpoint::CheckpointStats;

/// Record counters of one task.
#[derive(Debug, Default)]
pub(crate) struct TaskCounters {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) late_records: AtomicU64,
}

/// Shared metrics of one job.
#[derive(Debug, Default)]
pub(crate) struct JobMetrics {
    pub(crate) checkpoints: Mutex<Vec<CheckpointStats>>,
    pub(crate) aborted: AtomicU64,
    pub(crate) in_flight: AtomicI64,
    pub(crate) max_in_flight: AtomicI64,
    pub(crate) tasks: DashMap<TaskId, Arc<TaskCounters>>,
    pub(crate) recoveries: Mutex<Vec<Duration>>,
}

impl JobMetrics {
    pub(crate) fn sent(&self, records: usize) {
        let now = self.in_flight.fetch_add(records as i64, Ordering::Relaxed) + records as i64;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, records: usize) {
        self.in_flight.fetch_sub(records as i64, Ordering::Relaxed);
    }

    pub(crate) fn task(&self, task: &TaskId) -> Arc<TaskCounters> {
        Arc::clone(self.tasks.entry(task.clone()).or_default().value())
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let checkpoints = self
            .checkpoints
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let mut tasks: Vec<TaskRecordCounts> = self
            .tasks
            .iter()
            .map(|e| TaskRecordCounts {
                task: e.key().clone(),
                records_in: e.value().records_in.load(Ordering::Relaxed),
                records_out: e.value().records_out.load(Ordering::Relaxed),
                late_records: e.value().late_records.load(Ordering::Relaxed),
            })
            .collect();
        tasks.sort_by(|a, b| a.task.cmp(&b.task));
        let recoveries = self
            .recoveries
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        MetricsSnapshot {
            recoveries,
            checkpoints,
            checkpoints_aborted: self.aborted.load(Ordering::Relaxed),
            records_in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            max_records_in_flight: self.max_in_flight.load(Ordering::Relaxed).max(0) as u64,
            tasks,
        }
    }
}

/// Records in and out of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecordCounts {
    /// The task.
    pub task: TaskId,
    /// Records it received (for a source: read from the log).
    pub records_in: u64,
    /// Records it emitted.
    pub records_out: u64,
    /// Records dropped for arriving after their window's allowed lateness.
    pub late_records: u64,
}

/// A copy of a job's metrics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Every completed checkpoint, oldest first.
    pub checkpoints: Vec<CheckpointStats>,
    /// Checkpoints aborted (timed out or failed).
    pub checkpoints_aborted: u64,
    /// Records sent on channels and not yet taken by their receiver.
    pub records_in_flight: u64,
    /// The most records ever in flight at once.
    pub max_records_in_flight: u64,
    /// Per task record counts, by task (summed over restarts).
    pub tasks: Vec<TaskRecordCounts>,
    /// Per restart: the time from the failure to the first record processed by the restored
    /// region.
    pub recoveries: Vec<Duration>,
}
