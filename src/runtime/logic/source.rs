//! The logic of a source task ([`SourceLogic`]): reading its share of a log's partitions,
//! checkpointing their offsets, and (for event time) deriving the watermark and idleness.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::shared::{collector, operator_capture, Capture, LogicParams, SourcePoll, TaskLogic};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::runtime::actor::wire::{Progress, ProgressKind};
use crate::runtime::channel::{Collector, Envelope, Origin};
use crate::runtime::messages;
use crate::runtime::metrics::TaskCounters;
use crate::runtime::operator::{Data, TaskInfo};
use crate::runtime::time::{Timestamp, WatermarkStatus, WatermarkStrategy};
use crate::state::{OperatorListState, OperatorStateBackend, Redistribution};

const SOURCE_OFFSETS: &str = "snapflow.source-offsets";

/// Decodes a log record into a stream record.
pub(crate) type Decoder<T> = Arc<dyn Fn(&[u8]) -> Result<T> + Send + Sync>;

/// How an event-time source reads timestamps and derives its watermark.
pub(crate) struct EventTimeSpec<T> {
    pub(crate) timestamp: Arc<dyn Fn(&T) -> Timestamp + Send + Sync>,
    pub(crate) strategy: WatermarkStrategy,
}

impl<T> Clone for EventTimeSpec<T> {
    fn clone(&self) -> Self {
        EventTimeSpec {
            timestamp: Arc::clone(&self.timestamp),
            strategy: self.strategy,
        }
    }
}

/// The offsets a source captured for a checkpoint, and whether it is a savepoint.
type Captured = (CheckpointId, Vec<(PartitionId, LogOffset)>, bool);

/// One log partition a source task reads.
#[derive(Debug, Clone, Copy)]
struct SourcePartition {
    id: PartitionId,
    next: LogOffset,
    stop: Option<LogOffset>,
    /// The largest event timestamp read so far (checkpointed).
    max_ts: Timestamp,
    /// Since when reading the partition found no new record (`None` while it has data). Only an
    /// empty read counts: a source held up by backpressure is not idle.
    empty_since: Option<std::time::Instant>,
}

impl SourcePartition {
    fn at_stop(&self) -> bool {
        self.stop.is_some_and(|s| self.next >= s)
    }
}

/// A source task reading its share of a log's partitions.
pub(crate) struct SourceLogic<T> {
    log: Arc<dyn ReplayableLog>,
    decode: Decoder<T>,
    info: TaskInfo,
    state: OperatorStateBackend,
    /// The vertex had state in the checkpoint restored.
    found: bool,
    offsets_state: Option<OperatorListState<(u32, u64, i64)>>,
    partitions: Vec<SourcePartition>,
    stops: Option<Arc<HashMap<PartitionId, LogOffset>>>,
    next: usize,
    out: Collector<T>,
    event_time: Option<EventTimeSpec<T>>,
    watermark_interval: std::time::Duration,
    idle_timeout: std::time::Duration,
    /// The last watermark status sent, and when.
    sent: Option<WatermarkStatus>,
    sent_at: Option<std::time::Instant>,
    final_sent: bool,
    /// Told the offsets of every checkpoint that completes (a source of a log the job owns).
    progress: Option<Progress>,
    /// The offsets captured per checkpoint not yet complete (with `progress` only).
    /// A savepoint's entry is flagged: its offsets stay in the log for good.
    captured: VecDeque<Captured>,
    /// The checkpoint the next capture is for, when it is a savepoint.
    savepoint: Option<CheckpointId>,
    /// A source of records without event time that must not hold back its consumers'
    /// watermark (a command source): it sends the watermark `MAX` once.
    timeless: bool,
    counters: Arc<TaskCounters>,
    /// The next offset of each partition (in `partitions`' order), for the metrics.
    offset_gauges: Vec<Arc<AtomicU64>>,
}

impl<T: Data> SourceLogic<T> {
    pub(crate) fn new(
        log: Arc<dyn ReplayableLog>,
        decode: Decoder<T>,
        event_time: Option<EventTimeSpec<T>>,
        p: LogicParams,
    ) -> Result<Self> {
        Ok(SourceLogic {
            out: collector(&p.outputs, p.batch_size, p.info.max_parallelism)?,
            found: p.restore.found,
            state: OperatorStateBackend::restored(p.restore.operator),
            offsets_state: None,
            partitions: Vec::new(),
            stops: p.stop_offsets,
            next: 0,
            info: p.info,
            log,
            decode,
            event_time,
            watermark_interval: p.watermark_interval,
            idle_timeout: p.idle_timeout,
            sent: None,
            sent_at: None,
            final_sent: false,
            progress: None,
            captured: VecDeque::new(),
            savepoint: None,
            timeless: false,
            counters: p.counters,
            offset_gauges: Vec::new(),
        })
    }

    /// Makes the source hold back no watermark (see `timeless`).
    pub(crate) fn timeless(mut self, timeless: bool) -> Self {
        self.timeless = timeless;
        self
    }

    /// Tells `progress` the offsets of each checkpoint that completes.
    pub(crate) fn with_progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    fn save_offsets(&mut self) -> Result<()> {
        if let Some(list) = &self.offsets_state {
            let v = self
                .partitions
                .iter()
                .map(|p| (p.id.0, p.next.0, p.max_ts))
                .collect();
            list.update(&mut self.state, v)?;
        }
        Ok(())
    }
}

impl<T: Data> TaskLogic for SourceLogic<T> {
    fn open(&mut self) -> Result<()> {
        let list = self
            .state
            .list_state::<(u32, u64, i64)>(SOURCE_OFFSETS, Redistribution::Split)?;
        let restored = list.get(&self.state)?.to_vec();
        let stop = |p: PartitionId| self.stops.as_ref().and_then(|s| s.get(&p).copied());
        // A source whose vertex has no state in the checkpoint restored (new, or renamed
        // without keeping its uid) starts at its log's start, like a fresh job.
        if restored.is_empty() && !self.found {
            for p in 0..self.log.partitions() {
                if p % self.info.parallelism == self.info.task.index {
                    let id = PartitionId(p);
                    self.partitions.push(SourcePartition {
                        id,
                        next: self.log.start_offset(id)?,
                        stop: stop(id),
                        max_ts: Timestamp::MIN,
                        empty_since: None,
                    });
                }
            }
        } else {
            for (p, o, max_ts) in restored {
                let id = PartitionId(p);
                self.partitions.push(SourcePartition {
                    id,
                    next: LogOffset(o),
                    stop: stop(id),
                    max_ts,
                    empty_since: None,
                });
            }
        }
        self.offsets_state = Some(list);
        if let (Some(progress), Some(_)) = (&self.progress, self.info.restored_from) {
            let offsets: Vec<_> = self.partitions.iter().map(|p| (p.id, p.next)).collect();
            progress(ProgressKind::Restored, &offsets);
        }
        let offsets: Vec<_> = self.partitions.iter().map(|p| (p.id, p.next)).collect();
        self.offset_gauges = self.counters.set_source(Arc::clone(&self.log), &offsets);
        self.save_offsets()
    }

    fn on_records(&mut self, _batch: Box<dyn Any + Send>, _origin: Option<Origin>) -> Result<()> {
        Err(Error::Internal("a source task received records".into()))
    }

    fn end_of_input(&mut self) -> Result<()> {
        Ok(())
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        self.save_offsets()?;
        let mut c = operator_capture(&self.state)?;
        c.sources = self.partitions.iter().map(|p| (p.id, p.next)).collect();
        if self.progress.is_some() {
            let savepoint = self.savepoint.take() == Some(checkpoint);
            self.captured
                .push_back((checkpoint, c.sources.clone(), savepoint));
        }
        Ok(c)
    }

    fn savepoint_next(&mut self, checkpoint: CheckpointId) {
        self.savepoint = Some(checkpoint);
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let mut done = None;
        while self
            .captured
            .front()
            .is_some_and(|(id, _, _)| *id <= checkpoint)
        {
            done = self.captured.pop_front();
        }
        if let (Some(progress), Some((id, offsets, savepoint))) = (&self.progress, done) {
            let kind = if savepoint && id == checkpoint {
                ProgressKind::Savepoint
            } else {
                ProgressKind::Completed
            };
            progress(kind, &offsets);
        }
        Ok(())
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.out.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.out.has_buffered()
    }

    fn poll_source(&mut self, max: usize) -> Result<SourcePoll> {
        let n = self.partitions.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            let part = self.partitions[i];
            let want = match part.stop {
                Some(s) if part.next >= s => continue,
                Some(s) => ((s.0 - part.next.0) as usize).min(max),
                None => max,
            };
            let mut batch = self.log.read(part.id, part.next, want)?;
            // A log with gaps in its offsets may end the batch beyond its last record (Kafka's
            // transaction markers), and may give records past a bounded source's stop: those
            // are not read, and the source stops at its stop.
            let next = match part.stop {
                Some(s) => batch.next_offset().min(s),
                None => batch.next_offset(),
            };
            if batch.is_empty() {
                let p = &mut self.partitions[i];
                p.empty_since.get_or_insert_with(messages::now);
                if next > p.next {
                    p.next = next;
                    if let Some(g) = self.offset_gauges.get(i) {
                        g.store(next.0, Ordering::Relaxed);
                    }
                }
                continue;
            }
            let pid = part.id;
            let mut max_ts = part.max_ts;
            // Positions travel with the records only where they are consecutive.
            self.out
                .set_origin(batch.is_dense().then_some((pid, batch.base_offset())));
            // A dense batch is within the stop already (`want`).
            if let Some(s) = part.stop.filter(|_| !batch.is_dense()) {
                let below = batch.iter().take_while(|(o, _)| *o < s).count();
                batch.truncate(below);
            }
            let read = batch.len();
            for (o, bytes) in batch.iter() {
                let record = (self.decode)(bytes).map_err(|e| match e {
                    Error::Codec { op, reason, .. } => Error::Codec {
                        op,
                        what: format!("log record at partition {pid} offset {o}"),
                        reason,
                    },
                    other => other,
                })?;
                if let Some(et) = &self.event_time {
                    max_ts = max_ts.max((et.timestamp)(&record));
                }
                self.out.emit(record);
            }
            self.out.set_origin(None);
            let p = &mut self.partitions[i];
            p.next = next;
            p.max_ts = max_ts;
            p.empty_since = None;
            if let Some(g) = self.offset_gauges.get(i) {
                g.store(next.0, Ordering::Relaxed);
            }
            self.next = (i + 1) % n;
            return Ok(SourcePoll::Produced(read));
        }
        let all_stopped = self.partitions.iter().all(SourcePartition::at_stop);
        if all_stopped && self.stops.is_some() {
            Ok(SourcePoll::AtEnd)
        } else {
            Ok(SourcePoll::Idle)
        }
    }

    fn source_watermark(&mut self, now: std::time::Instant, out: &mut Vec<WatermarkStatus>) {
        let Some(et) = self.event_time.as_ref() else {
            if self.timeless && !self.final_sent {
                self.final_sent = true;
                out.push(WatermarkStatus::At(Timestamp::MAX));
            }
            return;
        };
        let strategy = et.strategy;
        let last_at = match self.sent {
            Some(WatermarkStatus::At(w)) => w,
            _ => Timestamp::MIN,
        };
        if self.stops.is_some() && self.partitions.iter().all(SourcePartition::at_stop) {
            // The input ended: nothing is late any more; let every timer fire.
            if !self.final_sent {
                self.final_sent = true;
                self.sent = Some(WatermarkStatus::At(Timestamp::MAX));
                out.push(WatermarkStatus::At(Timestamp::MAX));
            }
            return;
        }
        let idle_after = self.idle_timeout;
        let active = self
            .partitions
            .iter()
            .filter(|p| {
                !p.at_stop()
                    && p.empty_since
                        .is_none_or(|t| now.saturating_duration_since(t) < idle_after)
            })
            .map(|p| strategy.watermark(p.max_ts))
            .min();
        match active {
            None => {
                if self.sent == Some(WatermarkStatus::Idle) {
                    return;
                }
                // Going idle: first send how far every partition got (the final word on them
                // until data comes), then idle.
                let reached = self
                    .partitions
                    .iter()
                    .map(|p| strategy.watermark(p.max_ts))
                    .min()
                    .unwrap_or(Timestamp::MIN);
                if reached > last_at {
                    out.push(WatermarkStatus::At(reached));
                }
                out.push(WatermarkStatus::Idle);
                self.sent = Some(WatermarkStatus::Idle);
                self.sent_at = Some(now);
            }
            Some(w) => {
                let resumed = self.sent == Some(WatermarkStatus::Idle);
                let due = self
                    .sent_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.watermark_interval);
                if (resumed || (w > last_at && due)) && w > Timestamp::MIN {
                    self.sent = Some(WatermarkStatus::At(w.max(last_at)));
                    self.sent_at = Some(now);
                    out.push(WatermarkStatus::At(w.max(last_at)));
                }
            }
        }
    }
}
