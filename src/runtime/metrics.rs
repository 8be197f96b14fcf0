//! Job metrics, written by the actors and read by a [`JobHandle`](super::JobHandle) from any
//! thread.
//!
//! Invariant: memory and the cost of a snapshot are bounded by the configured windows
//! ([`JobConfig::metrics_window`](crate::JobConfig::metrics_window)), never by the job's
//! uptime: lists keep their newest entries ([`Window`]), totals are counters.

use std::collections::VecDeque;
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

/// The newest `capacity` items pushed, and how many were pushed in all.
#[derive(Debug, Clone)]
pub(crate) struct Window<T> {
    items: VecDeque<T>,
    capacity: usize,
    total: u64,
}

impl<T> Window<T> {
    pub(crate) fn new(capacity: usize) -> Window<T> {
        Window {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            total: 0,
        }
    }

    /// Adds `item`, dropping the oldest one when full.
    pub(crate) fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
        self.total += 1;
    }

    /// How many items were ever pushed.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The newest item.
    pub(crate) fn last(&self) -> Option<&T> {
        self.items.back()
    }

    /// The kept items, oldest first.
    pub(crate) fn to_vec(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.items.iter().cloned().collect()
    }
}

/// Shared metrics of one job.
#[derive(Debug)]
pub(crate) struct JobMetrics {
    checkpoints: Mutex<Window<CheckpointStats>>,
    pub(crate) aborted: AtomicU64,
    pub(crate) in_flight: AtomicI64,
    pub(crate) max_in_flight: AtomicI64,
    pub(crate) tasks: DashMap<TaskId, Arc<TaskCounters>>,
    recoveries: Mutex<Window<Duration>>,
}

impl JobMetrics {
    /// Metrics keeping the newest `window` checkpoint stats and recovery times.
    pub(crate) fn new(window: usize) -> JobMetrics {
        JobMetrics {
            checkpoints: Mutex::new(Window::new(window)),
            aborted: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicI64::new(0),
            tasks: DashMap::new(),
            recoveries: Mutex::new(Window::new(window)),
        }
    }

    /// A checkpoint completed with `stats`.
    pub(crate) fn checkpoint_completed(&self, stats: CheckpointStats) {
        lock(&self.checkpoints).push(stats);
    }

    /// A restored region processed its first record `took` after the failure.
    pub(crate) fn recovered(&self, took: Duration) {
        lock(&self.recoveries).push(took);
    }

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
        let (checkpoints, checkpoints_completed) = {
            let c = lock(&self.checkpoints);
            (c.to_vec(), c.total())
        };
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
        let (recoveries, recoveries_total) = {
            let r = lock(&self.recoveries);
            (r.to_vec(), r.total())
        };
        MetricsSnapshot {
            recoveries,
            recoveries_total,
            checkpoints,
            checkpoints_completed,
            checkpoints_aborted: self.aborted.load(Ordering::Relaxed),
            records_in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            max_records_in_flight: self.max_in_flight.load(Ordering::Relaxed).max(0) as u64,
            tasks,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Windows of plain values: consistent whatever a panicking holder did.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// The newest completed checkpoints (at most
    /// [`JobConfig::metrics_window`](crate::JobConfig::metrics_window)), oldest first.
    pub checkpoints: Vec<CheckpointStats>,
    /// Checkpoints completed in all (kept in `checkpoints` or not).
    pub checkpoints_completed: u64,
    /// Checkpoints aborted (timed out or failed).
    pub checkpoints_aborted: u64,
    /// Records sent on channels and not yet taken by their receiver.
    pub records_in_flight: u64,
    /// The most records ever in flight at once.
    pub max_records_in_flight: u64,
    /// Per task record counts, by task (summed over restarts).
    pub tasks: Vec<TaskRecordCounts>,
    /// For the newest restarts (at most `metrics_window`): the time from the failure to the
    /// first record processed by the restored region.
    pub recoveries: Vec<Duration>,
    /// Recovery times measured in all (kept in `recoveries` or not).
    pub recoveries_total: u64,
}
