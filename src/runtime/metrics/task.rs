//! The figures of one task: counters its actor writes on its own thread, probes the runtime
//! registers for what only the reader can see (input queues, a source's log end), and the
//! per-second rates derived from two readings.
//!
//! Invariant: the task's hot path does no locking and no allocation for metrics: a batch
//! costs a few relaxed atomic adds and two clock readings. Locks here are taken only when a
//! task starts (registering probes) and by a reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::checkpoint::TaskId;
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::runtime::time::Timestamp;

/// The number of batches queued on one input channel now, and its capacity; `None` once the
/// channel is gone.
pub(crate) type InputProbe = Box<dyn Fn() -> Option<(usize, usize)> + Send + Sync>;

/// Nanoseconds since the process's first reading of this clock, plus one (0 means "never").
pub(crate) fn mono_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// The partitions a source task reads: the log, and the next offset of each.
struct SourceProbe {
    log: Arc<dyn ReplayableLog>,
    partitions: Vec<(PartitionId, Arc<AtomicU64>)>,
}

/// Counters and gauges of one task (shared by its incarnations: totals sum over restarts).
#[derive(Default)]
pub(crate) struct TaskCounters {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) late_records: AtomicU64,
    /// Time spent handling input (a source: reading its log) and emitting, in nanoseconds.
    busy_ns: AtomicU64,
    /// Time spent waiting on a full output channel, in nanoseconds, for waits that ended.
    backpressure_ns: AtomicU64,
    /// When the wait on a full output channel in progress began ([`mono_ns`]); 0 if none.
    waiting_since: AtomicU64,
    /// The task's current watermark, `i64::MIN` before the first.
    watermark: AtomicI64,
    /// Keyed state entries at the last capture.
    state_entries: AtomicU64,
    /// Bytes of the last snapshot written.
    state_bytes: AtomicU64,
    inputs: Mutex<HashMap<usize, InputProbe>>,
    source: Mutex<Option<SourceProbe>>,
}

impl std::fmt::Debug for TaskCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCounters")
            .field("records_in", &self.records_in)
            .field("records_out", &self.records_out)
            .finish_non_exhaustive()
    }
}

/// Locks `m`. What the metrics keep behind a lock is plain values: consistent whatever a
/// panicking holder did.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TaskCounters {
    pub(crate) fn new() -> TaskCounters {
        TaskCounters {
            watermark: AtomicI64::new(i64::MIN),
            ..TaskCounters::default()
        }
    }

    /// Adds the time since `started` to the busy time.
    pub(crate) fn busy_since(&self, started: Instant) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A wait on a full output channel begins.
    pub(crate) fn wait_begins(&self) {
        self.waiting_since.store(mono_ns(), Ordering::Relaxed);
    }

    /// The wait on a full output channel ended.
    pub(crate) fn wait_ends(&self) {
        let since = self.waiting_since.swap(0, Ordering::Relaxed);
        if since != 0 {
            let ns = mono_ns().saturating_sub(since);
            self.backpressure_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_watermark(&self, w: Timestamp) {
        self.watermark.store(w, Ordering::Relaxed);
    }

    pub(crate) fn set_state(&self, entries: Option<u64>, bytes: Option<u64>) {
        if let Some(e) = entries {
            self.state_entries.store(e, Ordering::Relaxed);
        }
        if let Some(b) = bytes {
            self.state_bytes.store(b, Ordering::Relaxed);
        }
    }

    /// Registers how to read the queue of input channel `slot` (replacing an earlier
    /// incarnation's).
    pub(crate) fn set_input(&self, slot: usize, probe: InputProbe) {
        lock(&self.inputs).insert(slot, probe);
    }

    /// Registers the partitions a source task reads, returning the gauge of each partition's
    /// next offset, which the task sets after every read.
    pub(crate) fn set_source(
        &self,
        log: Arc<dyn ReplayableLog>,
        partitions: &[(PartitionId, LogOffset)],
    ) -> Vec<Arc<AtomicU64>> {
        let gauges: Vec<(PartitionId, Arc<AtomicU64>)> = partitions
            .iter()
            .map(|(p, o)| (*p, Arc::new(AtomicU64::new(o.0))))
            .collect();
        let out = gauges.iter().map(|(_, g)| Arc::clone(g)).collect();
        *lock(&self.source) = Some(SourceProbe {
            log,
            partitions: gauges,
        });
        out
    }

    /// Busy and backpressured nanoseconds so far (a wait in progress counted to now).
    fn times(&self) -> (u64, u64) {
        let since = self.waiting_since.load(Ordering::Relaxed);
        let ongoing = if since == 0 {
            0
        } else {
            mono_ns().saturating_sub(since)
        };
        (
            self.busy_ns.load(Ordering::Relaxed),
            self.backpressure_ns.load(Ordering::Relaxed) + ongoing,
        )
    }

    fn read(&self, task: &TaskId, now_ms: Timestamp) -> (TaskMetrics, Vec<SourcePartitionMetrics>) {
        let (busy, bp) = self.times();
        let (mut queued, mut capacity) = (0u64, 0u64);
        for probe in lock(&self.inputs).values() {
            if let Some((q, c)) = probe() {
                queued += q as u64;
                capacity += c as u64;
            }
        }
        let wm = self.watermark.load(Ordering::Relaxed);
        let watermark = (wm != i64::MIN).then_some(wm);
        let metrics = TaskMetrics {
            task: task.clone(),
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            late_records: self.late_records.load(Ordering::Relaxed),
            records_in_per_second: 0.0,
            records_out_per_second: 0.0,
            busy_ratio: 0.0,
            backpressure_ratio: 0.0,
            idle_ratio: 0.0,
            busy_time: Duration::from_nanos(busy),
            backpressure_time: Duration::from_nanos(bp),
            input_queued: queued,
            input_capacity: capacity,
            watermark,
            watermark_lag: watermark
                .filter(|w| *w > i64::MIN + 1 && *w < i64::MAX)
                .map(|w| Duration::from_millis(now_ms.saturating_sub(w).max(0) as u64)),
            state_entries: self.state_entries.load(Ordering::Relaxed),
            state_bytes: self.state_bytes.load(Ordering::Relaxed),
        };
        (metrics, self.read_source(task))
    }

    fn read_source(&self, task: &TaskId) -> Vec<SourcePartitionMetrics> {
        let guard = lock(&self.source);
        let Some(src) = guard.as_ref() else {
            return Vec::new();
        };
        src.partitions
            .iter()
            .map(|(p, next)| {
                let offset = next.load(Ordering::Relaxed);
                let end = src.log.end_offset(*p).ok().map(|o| o.0);
                SourcePartitionMetrics {
                    task: task.clone(),
                    partition: *p,
                    offset,
                    end_offset: end,
                    lag: end.map(|e| e.saturating_sub(offset)),
                }
            })
            .collect()
    }
}

/// The figures of one task at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMetrics {
    /// The task.
    pub task: TaskId,
    /// Records it received (for a source: read from the log), summed over restarts.
    pub records_in: u64,
    /// Records it emitted, summed over restarts.
    pub records_out: u64,
    /// Records dropped for arriving after their window's allowed lateness.
    pub late_records: u64,
    /// Records received per second, over the last rate window (about a second; 0 until the
    /// job's metrics have been read twice at least a second apart).
    pub records_in_per_second: f64,
    /// Records emitted per second, over the last rate window.
    pub records_out_per_second: f64,
    /// Share of the last rate window spent handling input and emitting (0 to 1).
    pub busy_ratio: f64,
    /// Share of the last rate window spent waiting on a full output channel (0 to 1): the
    /// task is backpressured by a slower consumer.
    pub backpressure_ratio: f64,
    /// Share of the last rate window neither busy nor backpressured (waiting for input).
    pub idle_ratio: f64,
    /// Time spent busy in all.
    pub busy_time: Duration,
    /// Time spent backpressured in all.
    pub backpressure_time: Duration,
    /// Batches queued on the task's input channels now.
    pub input_queued: u64,
    /// The capacity of its input channels, in batches (`input_queued / input_capacity` is
    /// their fill).
    pub input_capacity: u64,
    /// Its current event-time watermark (milliseconds), if it has one.
    pub watermark: Option<Timestamp>,
    /// Processing time minus the watermark, for a finite watermark.
    pub watermark_lag: Option<Duration>,
    /// Keyed state entries at its last checkpoint.
    pub state_entries: u64,
    /// Bytes of its last snapshot written.
    pub state_bytes: u64,
}

/// Where a source task is in one log partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePartitionMetrics {
    /// The source task.
    pub task: TaskId,
    /// The partition.
    pub partition: PartitionId,
    /// The next offset the task reads.
    pub offset: u64,
    /// The log's end offset (the offset of the next record appended), if it could be read.
    pub end_offset: Option<u64>,
    /// End minus current: records appended and not read yet.
    pub lag: Option<u64>,
}

/// One reading of every task's raw totals, for rates.
#[derive(Debug, Default)]
pub(crate) struct RateState {
    base: Option<(Instant, HashMap<TaskId, [u64; 4]>)>,
    rates: HashMap<TaskId, [f64; 5]>,
}

/// How long a rate window lasts at least.
const RATE_WINDOW: Duration = Duration::from_secs(1);

impl RateState {
    /// Fills in the rates of `tasks`: recomputed when the last base reading is at least a
    /// second old (which becomes the new base), the previous ones otherwise.
    fn apply(&mut self, tasks: &mut [TaskMetrics]) {
        let now = Instant::now();
        let raw = |t: &TaskMetrics| {
            [
                t.records_in,
                t.records_out,
                t.busy_time.as_nanos() as u64,
                t.backpressure_time.as_nanos() as u64,
            ]
        };
        let due = self
            .base
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= RATE_WINDOW);
        if due {
            if let Some((at, base)) = &self.base {
                let secs = now.duration_since(*at).as_secs_f64();
                self.rates.clear();
                for t in tasks.iter() {
                    let Some(b) = base.get(&t.task) else { continue };
                    let d = |i: usize| raw(t)[i].saturating_sub(b[i]) as f64;
                    let busy = (d(2) / 1e9 / secs).clamp(0.0, 1.0);
                    let bp = (d(3) / 1e9 / secs).clamp(0.0, 1.0 - busy);
                    let rate = [d(0) / secs, d(1) / secs, busy, bp, 1.0 - busy - bp];
                    self.rates.insert(t.task.clone(), rate);
                }
            }
            self.base = Some((
                now,
                tasks.iter().map(|t| (t.task.clone(), raw(t))).collect(),
            ));
        }
        for t in tasks.iter_mut() {
            if let Some(r) = self.rates.get(&t.task) {
                t.records_in_per_second = r[0];
                t.records_out_per_second = r[1];
                t.busy_ratio = r[2];
                t.backpressure_ratio = r[3];
                t.idle_ratio = r[4];
            }
        }
    }
}

/// Reads every task, in task order, with their rates and their source partitions.
pub(crate) fn read_tasks(
    tasks: &dashmap::DashMap<TaskId, Arc<TaskCounters>>,
    rates: &Mutex<RateState>,
    now_ms: Timestamp,
) -> (Vec<TaskMetrics>, Vec<SourcePartitionMetrics>) {
    let mut all: Vec<(TaskMetrics, Vec<SourcePartitionMetrics>)> = tasks
        .iter()
        .map(|e| e.value().read(e.key(), now_ms))
        .collect();
    all.sort_by(|a, b| a.0.task.cmp(&b.0.task));
    let (mut metrics, sources): (Vec<_>, Vec<_>) = all.into_iter().unzip();
    lock(rates).apply(&mut metrics);
    (metrics, sources.into_iter().flatten().collect())
}
