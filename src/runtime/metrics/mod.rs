//! Job metrics, written by the actors and read by a [`JobHandle`](super::JobHandle) from any
//! thread (the web view and the Prometheus exporter read them through it).
//!
//! Invariants: memory and the cost of a snapshot are bounded by the configured windows
//! ([`JobConfig::metrics_window`](crate::JobConfig::metrics_window)), never by the job's
//! uptime: lists keep their newest entries (`Window`), totals are counters. The per-record
//! path of a task touches only its own `TaskCounters` (relaxed atomics), never a lock.

mod records;
mod task;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use crate::checkpoint::{CheckpointId, TaskId};
use crate::error::ErrorClass;
use crate::runtime::events::JobEvent;

pub use crate::checkpoint::CheckpointStats;
pub use records::{
    AbortedCheckpoint, EdgeInfo, ExceptionRecord, FailureCounts, JobGraph, Partitioning,
    RestartRecord, TimelineEntry, VertexInfo, VertexKind,
};
use task::lock;
pub(crate) use task::{InputProbe, TaskCounters};
pub use task::{SourcePartitionMetrics, TaskMetrics};

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
    job: String,
    started: Instant,
    graph: OnceLock<JobGraph>,
    checkpoints: Mutex<Window<CheckpointStats>>,
    aborts: Mutex<Window<AbortedCheckpoint>>,
    pub(crate) in_flight: AtomicI64,
    pub(crate) max_in_flight: AtomicI64,
    pub(crate) tasks: DashMap<TaskId, Arc<TaskCounters>>,
    rates: Mutex<task::RateState>,
    recoveries: Mutex<Window<Duration>>,
    history: Mutex<History>,
}

/// What the metrics keep of the job's history.
#[derive(Debug)]
struct History {
    restarts: Window<RestartRecord>,
    exceptions: Window<ExceptionRecord>,
    timeline: Window<TimelineEntry>,
    failures: FailureCounts,
    region_restarts: u64,
    job_restarts: u64,
}

impl JobMetrics {
    /// Metrics of job `job`, keeping the newest `window` entries of each list.
    pub(crate) fn new(job: &str, window: usize) -> JobMetrics {
        JobMetrics {
            job: job.to_string(),
            started: Instant::now(),
            graph: OnceLock::new(),
            checkpoints: Mutex::new(Window::new(window)),
            aborts: Mutex::new(Window::new(window)),
            in_flight: AtomicI64::new(0),
            max_in_flight: AtomicI64::new(0),
            tasks: DashMap::new(),
            rates: Mutex::new(task::RateState::default()),
            recoveries: Mutex::new(Window::new(window)),
            history: Mutex::new(History {
                restarts: Window::new(window),
                exceptions: Window::new(window),
                timeline: Window::new(window),
                failures: FailureCounts::default(),
                region_restarts: 0,
                job_restarts: 0,
            }),
        }
    }

    /// The job's graph, set once when the job starts.
    pub(crate) fn set_graph(&self, graph: JobGraph) {
        let _ = self.graph.set(graph);
    }

    /// The job's graph (empty before it is set).
    pub(crate) fn graph(&self) -> JobGraph {
        self.graph.get().cloned().unwrap_or_default()
    }

    /// A checkpoint completed with `stats`.
    pub(crate) fn checkpoint_completed(&self, stats: CheckpointStats) {
        lock(&self.checkpoints).push(stats);
    }

    /// A checkpoint was given up.
    pub(crate) fn checkpoint_aborted(&self, id: CheckpointId, reason: &str) {
        lock(&self.aborts).push(AbortedCheckpoint {
            id,
            at: SystemTime::now(),
            reason: reason.to_string(),
        });
    }

    /// A restored region processed its first record `took` after the failure.
    pub(crate) fn recovered(&self, took: Duration) {
        lock(&self.recoveries).push(took);
    }

    /// A failure was reported (by `task`, if a task's).
    pub(crate) fn failed(&self, task: Option<&TaskId>, class: ErrorClass, message: String) {
        let mut h = lock(&self.history);
        h.failures.add(class);
        h.exceptions.push(ExceptionRecord {
            at: SystemTime::now(),
            task: task.cloned(),
            class,
            message,
        });
    }

    /// A restart was decided (of the whole job when `job`).
    pub(crate) fn restarting(&self, job: bool) {
        let mut h = lock(&self.history);
        if job {
            h.job_restarts += 1;
        } else {
            h.region_restarts += 1;
        }
    }

    /// Restarted tasks run again, restored from `restored_from`.
    pub(crate) fn restored(&self, tasks: Vec<TaskId>, restored_from: Option<CheckpointId>) {
        lock(&self.history).restarts.push(RestartRecord {
            at: SystemTime::now(),
            tasks,
            restored_from,
        });
    }

    /// Keeps a notable job event in the timeline.
    pub(crate) fn event(&self, event: &JobEvent) {
        if records::is_notable(event) {
            lock(&self.history).timeline.push(TimelineEntry {
                at: SystemTime::now(),
                event: event.clone(),
            });
        }
    }

    pub(crate) fn sent(&self, records: usize) {
        let now = self.in_flight.fetch_add(records as i64, Ordering::Relaxed) + records as i64;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, records: usize) {
        self.in_flight.fetch_sub(records as i64, Ordering::Relaxed);
    }

    /// The counters of `task`, made on first use.
    pub(crate) fn task(&self, task: &TaskId) -> Arc<TaskCounters> {
        if let Some(c) = self.tasks.get(task) {
            return Arc::clone(c.value());
        }
        Arc::clone(
            self.tasks
                .entry(task.clone())
                .or_insert_with(|| Arc::new(TaskCounters::new()))
                .value(),
        )
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let (checkpoints, checkpoints_completed) = {
            let c = lock(&self.checkpoints);
            (c.to_vec(), c.total())
        };
        let (aborted_checkpoints, checkpoints_aborted) = {
            let a = lock(&self.aborts);
            (a.to_vec(), a.total())
        };
        let now_ms = crate::runtime::time::processing_time();
        let (tasks, sources) = task::read_tasks(&self.tasks, &self.rates, now_ms);
        let (recoveries, recoveries_total) = {
            let r = lock(&self.recoveries);
            (r.to_vec(), r.total())
        };
        let h = lock(&self.history);
        MetricsSnapshot {
            job: self.job.clone(),
            uptime: self.started.elapsed(),
            rss_bytes: process_rss(),
            recoveries,
            recoveries_total,
            checkpoints,
            checkpoints_completed,
            checkpoints_aborted,
            aborted_checkpoints,
            records_in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            max_records_in_flight: self.max_in_flight.load(Ordering::Relaxed).max(0) as u64,
            tasks,
            sources,
            restarts: h.restarts.to_vec(),
            region_restarts: h.region_restarts,
            job_restarts: h.job_restarts,
            failures: h.failures,
            exceptions: h.exceptions.to_vec(),
            timeline: h.timeline.to_vec(),
        }
    }
}

/// The process's resident set size, on Linux (from `/proc/self/status`).
fn process_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A copy of a job's metrics at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// The job's name.
    pub job: String,
    /// Time since the job started.
    pub uptime: Duration,
    /// The process's resident set size in bytes (Linux only).
    pub rss_bytes: Option<u64>,
    /// The newest completed checkpoints (at most
    /// [`JobConfig::metrics_window`](crate::JobConfig::metrics_window)), oldest first.
    pub checkpoints: Vec<CheckpointStats>,
    /// Checkpoints completed in all (kept in `checkpoints` or not).
    pub checkpoints_completed: u64,
    /// Checkpoints aborted (timed out or failed).
    pub checkpoints_aborted: u64,
    /// The newest aborted checkpoints (at most `metrics_window`), oldest first, with why.
    pub aborted_checkpoints: Vec<AbortedCheckpoint>,
    /// Records sent on channels and not yet taken by their receiver.
    pub records_in_flight: u64,
    /// The most records ever in flight at once.
    pub max_records_in_flight: u64,
    /// Per task figures, by task (counts summed over restarts).
    pub tasks: Vec<TaskMetrics>,
    /// Per source task and partition: offsets and lag.
    pub sources: Vec<SourcePartitionMetrics>,
    /// For the newest restarts (at most `metrics_window`): the time from the failure to the
    /// first record processed by the restored region.
    pub recoveries: Vec<Duration>,
    /// Recovery times measured in all (kept in `recoveries` or not).
    pub recoveries_total: u64,
    /// The newest restarts (at most `metrics_window`), with the checkpoint each restored.
    pub restarts: Vec<RestartRecord>,
    /// Restarts of a failover region decided in all.
    pub region_restarts: u64,
    /// Restarts of the whole job decided in all.
    pub job_restarts: u64,
    /// Failures reported in all, by class.
    pub failures: FailureCounts,
    /// The newest failures (at most `metrics_window`).
    pub exceptions: Vec<ExceptionRecord>,
    /// The newest notable events (at most `metrics_window`): failures, chaos kills, restarts,
    /// restores, aborted checkpoints, stops.
    pub timeline: Vec<TimelineEntry>,
}
