//! Channels between tasks: what travels on them, how a consumer reads them, how a producer
//! routes records into them.
//!
//! One channel joins one producer task to one consumer task: a bounded tokio mpsc queue of
//! [`Envelope`]s (`channel_capacity` batches). Records, barriers and end-of-input travel on the
//! same queue, so nothing overtakes what was sent before it on that channel (FIFO per channel).
//! A full queue makes the producer wait (backpressure), all the way back to the sources.
//!
//! The consumer reads each input channel as an actix stream ([`GatedInput`]) behind a [`Gate`]:
//! while alignment blocks a channel its gate is closed, the stream answers `Pending`, and the
//! channel's records stay in its queue, so the producer feels the backpressure instead of the
//! consumer buffering without bound.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::Stream;
use tokio::sync::mpsc;

use super::metrics::JobMetrics;
use crate::checkpoint::CheckpointId;
use crate::log::{LogOffset, PartitionId};
use crate::state::{task_for_key_group, KeyGroup};

/// Where the first record of a batch was read: known for batches a source sends on a forward
/// edge, whose records are consecutive offsets of one partition.
pub(crate) type Origin = (PartitionId, LogOffset);

/// What travels on a channel.
pub(crate) enum Envelope {
    /// A batch of records: a boxed `Vec<T>`, its length, and where it was read if known.
    Records(Box<dyn Any + Send>, usize, Option<Origin>),
    /// Checkpoint barrier: every record before it belongs to epoch `n` or earlier.
    /// A checkpoint's barrier; `true` when it must align whatever the job's checkpoint mode
    /// (a savepoint's).
    Barrier(CheckpointId, bool),
    /// An event-time watermark status: behind every record sent before it.
    Watermark(crate::runtime::time::WatermarkStatus),
    /// The producer will send no more records (a final barrier may still follow).
    End,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Envelope::Records(_, n, _) => write!(f, "Records({n})"),
            Envelope::Barrier(id, aligned) => write!(f, "Barrier({id}, aligned: {aligned})"),
            Envelope::Watermark(w) => write!(f, "Watermark({w:?})"),
            Envelope::End => f.write_str("End"),
        }
    }
}

pub(crate) type Sender = mpsc::Sender<Envelope>;
pub(crate) type Receiver = mpsc::Receiver<Envelope>;

/// Opens or closes one input channel of a task. Lives on the task's thread only.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Closed by barrier alignment.
    closed: Cell<bool>,
    /// Held while the task's async calls fill its capacity (independent of alignment).
    held: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Gate {
    pub(crate) fn close(&self) {
        self.closed.set(true);
    }

    pub(crate) fn open(&self) {
        self.closed.set(false);
        self.wake_if_open();
    }

    /// Holds (or releases) the channel whatever alignment says.
    pub(crate) fn hold(&self, held: bool) {
        self.held.set(held);
        self.wake_if_open();
    }

    fn is_shut(&self) -> bool {
        self.closed.get() || self.held.get()
    }

    fn wake_if_open(&self) {
        if !self.is_shut() {
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// One item read from an input channel.
#[derive(Debug)]
pub(crate) struct Input {
    pub(crate) channel: usize,
    pub(crate) envelope: Envelope,
}

/// An input channel as a stream that yields nothing while its gate is closed.
pub(crate) struct GatedInput {
    channel: usize,
    rx: Receiver,
    gate: Rc<Gate>,
    metrics: Arc<JobMetrics>,
}

impl GatedInput {
    pub(crate) fn new(
        channel: usize,
        rx: Receiver,
        gate: Rc<Gate>,
        metrics: Arc<JobMetrics>,
    ) -> Self {
        GatedInput {
            channel,
            rx,
            gate,
            metrics,
        }
    }
}

impl Stream for GatedInput {
    type Item = Input;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Input>> {
        if self.gate.is_shut() {
            *self.gate.waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(envelope)) => {
                if let Envelope::Records(_, n, _) = &envelope {
                    self.metrics.received(*n);
                }
                Poll::Ready(Some(Input {
                    channel: self.channel,
                    envelope,
                }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How an output edge picks the channel of a record.
pub(crate) enum Route<T> {
    /// Task i to task i: one channel.
    Forward,
    /// Round robin over the consumer's tasks, a whole batch at a time.
    Rebalance { next: usize },
    /// Every record to every consumer task.
    Broadcast,
    /// By key group of the record's key.
    Hash {
        key_group: Arc<dyn Fn(&T) -> KeyGroup + Send + Sync>,
        max_parallelism: u32,
    },
}

/// One output edge of a producer task: a route and one buffer per channel.
pub(crate) struct OutputEdge<T> {
    pub(crate) route: Route<T>,
    /// Index of each channel in the task's sender list.
    pub(crate) channels: Vec<usize>,
    pub(crate) buffers: Vec<Vec<T>>,
    /// For a forward edge: where the buffer's first record was read, unless `mixed`.
    pub(crate) origin: Option<Origin>,
    pub(crate) mixed: bool,
}

/// Where an operator puts its output records. The runtime sends them on in batches.
pub struct Collector<T> {
    edges: Vec<OutputEdge<T>>,
    batch_size: usize,
    emitted: u64,
    has_full: bool,
    /// The log position of the next record emitted, while a source emits what it read.
    next_origin: Option<Origin>,
}

impl<T> std::fmt::Debug for Collector<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("edges", &self.edges.len())
            .field("emitted", &self.emitted)
            .finish()
    }
}

impl<T: Clone + Send + 'static> Collector<T> {
    pub(crate) fn new(edges: Vec<OutputEdge<T>>, batch_size: usize) -> Self {
        Collector {
            edges,
            batch_size,
            emitted: 0,
            has_full: false,
            next_origin: None,
        }
    }

    /// Declares the log position of the next record emitted (sources only); each emit moves
    /// it one offset on. `None` ends the declaration.
    pub(crate) fn set_origin(&mut self, origin: Option<Origin>) {
        self.next_origin = origin;
    }

    /// Emits one record.
    pub fn emit(&mut self, record: T) {
        self.emitted += 1;
        let n = self.edges.len();
        let origin = self.next_origin;
        if let Some((_, off)) = &mut self.next_origin {
            off.0 += 1;
        }
        let mut record = Some(record);
        for (i, edge) in self.edges.iter_mut().enumerate() {
            // Clone for every edge but the last, which takes the record itself.
            let r = if i + 1 < n {
                record.clone()
            } else {
                record.take()
            };
            let Some(r) = r else { return };
            let full = match &mut edge.route {
                Route::Forward => {
                    let len = edge.buffers[0].len() as u64;
                    if len == 0 {
                        edge.origin = origin;
                        edge.mixed = false;
                    } else if edge.origin.map(|(p, o)| (p, LogOffset(o.0 + len))) != origin {
                        edge.mixed = true;
                    }
                    push(&mut edge.buffers[0], r, self.batch_size)
                }
                Route::Rebalance { next } => {
                    let c = *next;
                    let full = push(&mut edge.buffers[c], r, self.batch_size);
                    if full {
                        *next = (c + 1) % edge.buffers.len();
                    }
                    full
                }
                Route::Broadcast => {
                    let mut full = false;
                    for b in &mut edge.buffers {
                        full |= push(b, r.clone(), self.batch_size);
                    }
                    full
                }
                Route::Hash {
                    key_group,
                    max_parallelism,
                } => {
                    let kg = key_group(&r);
                    let target = task_for_key_group(kg, edge.buffers.len() as u32, *max_parallelism)
                        as usize;
                    push(&mut edge.buffers[target], r, self.batch_size)
                }
            };
            self.has_full |= full;
        }
    }

    /// Records emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Moves buffered records into `out` as envelopes: only full buffers unless `all`.
    pub(crate) fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        if !all && !self.has_full {
            return;
        }
        for edge in &mut self.edges {
            if all {
                // Partial batches too: move the round robin on, so small batches spread.
                if let Route::Rebalance { next } = &mut edge.route {
                    *next = (*next + 1) % edge.buffers.len().max(1);
                }
            }
            for (c, buf) in edge.buffers.iter_mut().enumerate() {
                if buf.is_empty() || (!all && buf.len() < self.batch_size) {
                    continue;
                }
                let batch = std::mem::replace(buf, Vec::with_capacity(self.batch_size));
                let n = batch.len();
                let origin = match edge.route {
                    Route::Forward if !edge.mixed => edge.origin.take(),
                    _ => None,
                };
                out.push((
                    edge.channels[c],
                    Envelope::Records(Box::new(batch), n, origin),
                ));
            }
        }
        self.has_full = false;
    }

    /// True when some buffer holds records.
    pub(crate) fn has_buffered(&self) -> bool {
        self.edges
            .iter()
            .any(|e| e.buffers.iter().any(|b| !b.is_empty()))
    }
}

fn push<T>(buf: &mut Vec<T>, r: T, batch: usize) -> bool {
    buf.push(r);
    buf.len() >= batch
}
