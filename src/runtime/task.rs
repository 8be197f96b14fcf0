//! The task actor: one actix actor per task, running its [`TaskLogic`] between its input
//! channels and its output channels.
//!
//! Runtime contract of a task:
//! - Input channels are read as actix streams, each behind a gate. Records are handed to the
//!   logic in batches, in FIFO order per channel.
//! - `Barrier(n)` on a channel goes to the [`Aligner`]: in exactly-once mode the channel's gate
//!   closes until `Barrier(n)` has arrived on every channel. Then the task captures its state
//!   (on its own thread: a clone for keyed state), sends `Barrier(n)` on every output channel
//!   after every record it emitted before, opens all gates, and encodes and writes the snapshot
//!   on a blocking background thread, acking `n` to the job master once it is durable.
//! - `End` on every input: the logic's end-of-input hook runs, then `End` goes out on every
//!   output channel.
//! - Output goes through bounded channels. When one is full the task stops handling any event
//!   (`ctx.wait`) until the send completes: backpressure reaches the sources.
//! - User code runs under `catch_unwind`. A panic or an error is reported to the job master as a
//!   task failure and the task stops; no other actor or thread is affected.
//! - A source has no inputs: a pacing stream ticks it; each tick reads one batch from the log.
//!   `Trigger(n)` from the master (its mailbox, never behind data) makes it emit `Barrier(n)`;
//!   a final trigger halts it for good, and at the end of input (not for a stop) makes it emit
//!   `End` first.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::Stream;
use tokio::sync::{mpsc::error::TrySendError, watch};

use super::actor::wire::{AnyReply, RunQuery};
use super::channel::{Envelope, Gate, Input, Sender};
use super::logic::{Completion, EncodeSnapshot, SourcePoll, TaskLogic};
use super::messages::{
    now, AckInfo, Complete, EventKind, InjectPanic, KillHosted, Shutdown, TaskEvent, Trigger,
};
use super::metrics::{JobMetrics, TaskCounters};
use super::operator::TaskInfo;
use crate::chaos::{ChaosHooks, Moment};
use crate::checkpoint::fence::{WriteFence, WritePermit};
use crate::checkpoint::{
    Aligner, BarrierOutcome, CheckpointId, CheckpointMode, CheckpointStorage, TaskId,
};
use crate::error::{Error, Result};
use crate::runtime::time::{processing_time, InputWatermarks, WatermarkChange, WatermarkStatus};
use crate::state::DeferredEncoding;

/// How a source's pacing stream ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    Run,
    Idle(Duration),
    Halt,
}

/// One tick of a source's pacing stream.
#[derive(Debug)]
pub(crate) struct Tick;

/// A stream that yields a tick after every yield to the scheduler while running, after a sleep
/// while idle, and never while halted.
pub(crate) fn pace_stream(
    pace: Rc<Cell<Pace>>,
    deterministic: bool,
    waker: Arc<tokio::sync::Notify>,
) -> impl Stream<Item = Tick> {
    futures::stream::unfold(pace, move |pace| {
        let waker = Arc::clone(&waker);
        async move {
            loop {
                match pace.get() {
                    Pace::Run => {
                        if deterministic {
                            // A fixed virtual cost per batch: with tokio's clock paused, time
                            // advances by exactly this much per batch, the same in every run.
                            tokio::time::sleep(Duration::from_micros(100)).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                        if pace.get() == Pace::Run {
                            return Some((Tick, pace));
                        }
                    }
                    Pace::Idle(d) => {
                        // An append to a log the job owns ends the sleep early.
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = waker.notified() => {}
                        }
                        if pace.get() == Pace::Idle(d) {
                            pace.set(Pace::Run);
                        }
                    }
                    Pace::Halt => {
                        // Sleep in long steps rather than forever, so the stream re-checks if a
                        // halted source is ever resumed.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    })
}

/// Settings a task needs from the job configuration.
#[derive(Debug, Clone)]
pub(crate) struct TaskSettings {
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) idle_poll: Duration,
    pub(crate) mode: CheckpointMode,
    /// One thread, virtual pacing, snapshot writes on the task's thread.
    pub(crate) deterministic: bool,
}

pub(crate) struct TaskActor {
    pub(crate) info: TaskInfo,
    /// The task as its checkpoint files name it (its vertex's uid and its index).
    pub(crate) state_id: TaskId,
    pub(crate) number: usize,
    pub(crate) incarnation: u32,
    pub(crate) logic: Box<dyn TaskLogic>,
    pub(crate) is_sink: bool,
    pub(crate) aligner: Aligner,
    pub(crate) watermarks: InputWatermarks,
    pub(crate) gates: Vec<Rc<Gate>>,
    pub(crate) ended: Vec<bool>,
    pub(crate) senders: Vec<Sender>,
    pub(crate) sends: VecDeque<(usize, Envelope)>,
    pub(crate) master: Recipient<TaskEvent>,
    pub(crate) storage: Arc<dyn CheckpointStorage>,
    /// The buffer snapshots are encoded into, reused from one checkpoint to the next: one
    /// allocation for the task's life instead of one per checkpoint, made on whichever
    /// blocking thread encodes (each thread's allocator arena would keep its own).
    pub(crate) snapshot_buf: Arc<std::sync::Mutex<Vec<u8>>>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) counters: Arc<TaskCounters>,
    pub(crate) cancel: watch::Receiver<bool>,
    pub(crate) pace: Rc<Cell<Pace>>,
    pub(crate) settings: TaskSettings,
    pub(crate) chaos: Arc<ChaosHooks>,
    /// The job's write fence: a snapshot write holds a permit while it runs.
    pub(crate) fence: Arc<WriteFence>,
    /// This actor's own permit of the fence, held for its whole life: the end of the job
    /// waits until the actor is gone, so that nothing it does (a sink's recovery, a commit)
    /// can touch the output of a job started afterwards.
    pub(crate) _alive: WritePermit,
    pub(crate) flush_scheduled: bool,
    /// True while a `ctx.wait` send of queued envelopes is in progress.
    pub(crate) waiting: bool,
    pub(crate) failed: bool,
    pub(crate) end_sent: bool,
    /// A source that took a final barrier: it reads nothing more.
    pub(crate) halted: bool,
    pub(crate) at_end_reported: bool,
    pub(crate) first_record_reported: bool,
    /// An async operator's task: its logic may hold its inputs.
    pub(crate) is_async: bool,
    /// Every input ended while async calls were unfinished: the end waits for them.
    pub(crate) end_deferred: bool,
    /// The tracing span of this incarnation's life (open to stop), with its attempt.
    pub(crate) span: tracing::Span,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

impl TaskActor {
    /// Runs `f` on the logic inside a panic boundary. On a panic or an error, reports the
    /// failure, stops the task and returns `None`.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &'static str,
        f: impl FnOnce(&mut dyn TaskLogic) -> Result<R>,
    ) -> Option<R> {
        let logic = &mut *self.logic;
        match catch_unwind(AssertUnwindSafe(|| f(logic))) {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                self.fail(ctx, e, what);
                None
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.fail(ctx, Error::Panic { message }, what);
                None
            }
        }
    }

    fn fail(&mut self, ctx: &mut Context<Self>, error: Error, what: &'static str) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.span.in_scope(|| {
            tracing::error!(task = %self.info.task, during = what, class = ?error.class(), error = %error, "task failed");
        });
        self.report(EventKind::Failed { error });
        self.pace.set(Pace::Halt);
        ctx.stop();
    }

    fn is_source(&self) -> bool {
        self.gates.is_empty()
    }

    fn report(&self, kind: EventKind) {
        self.master.do_send(TaskEvent {
            task: self.number,
            incarnation: self.incarnation,
            kind,
        });
    }

    /// Reports the first records this incarnation handles (the end of a recovery).
    fn first_record(&mut self) {
        if !self.first_record_reported {
            self.first_record_reported = true;
            self.report(EventKind::FirstRecord);
        }
    }

    /// If a chaos kill is armed for `moment`, fires it: a panic inside the task's panic
    /// boundary, handled like any user-code panic. Returns true when it fired.
    fn chaos_at(&mut self, ctx: &mut Context<Self>, moment: Moment) -> bool {
        let Some(kill) = self.chaos.fire(moment) else {
            return false;
        };
        let _ = self.guarded(ctx, "chaos kill", |_| -> Result<()> {
            panic!("chaos kill {kill}: injected panic at {moment:?}")
        });
        true
    }

    /// Sends queued envelopes: at once while the channels have room, then, if one is full,
    /// the rest in order while the task handles nothing else.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.waiting {
            // A send of earlier envelopes is in progress; these go after it (see below).
            return;
        }
        while let Some((ch, env)) = self.sends.pop_front() {
            let n = records_of(&env);
            match self.senders[ch].try_send(env) {
                Ok(()) => self.sent(n),
                Err(TrySendError::Full(env)) => {
                    self.sends.push_front((ch, env));
                    break;
                }
                Err(TrySendError::Closed(_)) => {
                    // The consumer is gone: the job master is handling its failure.
                    self.sends.clear();
                    return;
                }
            }
        }
        if self.sends.is_empty() {
            return;
        }
        let queue: Vec<(Sender, Envelope)> = self
            .sends
            .drain(..)
            .map(|(ch, env)| (self.senders[ch].clone(), env))
            .collect();
        let metrics = Arc::clone(&self.metrics);
        let counters = Arc::clone(&self.counters);
        let mut cancel = self.cancel.clone();
        let send_all = async move {
            for (tx, env) in queue {
                let n = records_of(&env);
                tokio::select! {
                    sent = tx.send(env) => {
                        if sent.is_err() {
                            return;
                        }
                        metrics.sent(n);
                        counters.records_out.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    _ = cancel.changed() => return,
                }
            }
        };
        // `ctx.wait` runs the most recently added wait future first, and a handler may queue
        // more envelopes after this point (a final trigger queues `End`, then a barrier): they
        // stay in `sends` until this send completes, then go out in order.
        self.waiting = true;
        self.counters.wait_begins();
        ctx.wait(send_all.into_actor(self).map(|(), act, ctx| {
            act.counters.wait_ends();
            act.waiting = false;
            act.pump(ctx);
        }));
    }

    fn sent(&self, n: usize) {
        if n > 0 {
            self.metrics.sent(n);
            self.counters
                .records_out
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Queues buffered output (all of it, or only full batches when lingering) and sends.
    fn flush(&mut self, ctx: &mut Context<Self>, all: bool) {
        let mut out = Vec::new();
        self.logic.drain(all, &mut out);
        self.sends.extend(out);
        if !all && !self.flush_scheduled && self.logic.has_buffered() {
            self.flush_scheduled = true;
            ctx.run_later(self.settings.linger, |act, ctx| {
                act.flush_scheduled = false;
                if !act.failed {
                    act.flush(ctx, true);
                }
            });
        }
        self.pump(ctx);
    }

    fn after_records(&mut self, ctx: &mut Context<Self>) {
        let all = self.settings.linger.is_zero();
        self.flush(ctx, all);
    }

    /// Queues `env` on every output channel, after everything buffered.
    fn broadcast(&mut self, ctx: &mut Context<Self>, make: impl Fn() -> Envelope) {
        let mut out = Vec::new();
        self.logic.drain(true, &mut out);
        self.sends.extend(out);
        for ch in 0..self.senders.len() {
            self.sends.push_back((ch, make()));
        }
        self.pump(ctx);
    }

    /// Captures the state for checkpoint `id` (its barrier `aligned` whatever the mode, for a
    /// savepoint), forwards the barrier, writes the snapshot and acks.
    fn checkpoint(
        &mut self,
        ctx: &mut Context<Self>,
        id: CheckpointId,
        alignment: Duration,
        aligned: bool,
    ) {
        let started = Instant::now();
        if aligned {
            self.logic.savepoint_next(id);
        }
        let Some(capture) = self.guarded(ctx, "snapshot capture", |l| l.capture(id)) else {
            return;
        };
        let capture_time = started.elapsed();
        self.counters.set_state(self.logic.state_entries(), None);
        self.broadcast(ctx, || Envelope::Barrier(id, aligned));
        if self.chaos_at(ctx, Moment::AfterCaptureBeforeAck) {
            return;
        }
        let Some(permit) = self.fence.begin() else {
            // The job is ending: nothing more is written.
            return;
        };
        let master = self.master.clone();
        let (number, incarnation) = (self.number, self.incarnation);
        let key_groups = capture.key_groups;
        let sources = capture.sources;
        let states = capture.states;
        let write = snapshot_writer(
            Arc::clone(&self.storage),
            id,
            self.state_id.clone(),
            capture.encode,
            Arc::clone(&self.snapshot_buf),
            permit,
        );
        let event = move |written: std::result::Result<
            Result<(crate::checkpoint::StateHandle, DeferredEncoding)>,
            String,
        >| {
            let kind = match written {
                Ok(Ok((state, task_encoding))) => EventKind::Ack(AckInfo {
                    checkpoint: id,
                    task: number,
                    state,
                    key_groups,
                    sources,
                    states,
                    alignment,
                    capture: capture_time,
                    task_encoding,
                    acked_at: now(),
                }),
                Ok(Err(error)) => EventKind::Decline {
                    checkpoint: id,
                    error,
                },
                Err(join) => EventKind::Decline {
                    checkpoint: id,
                    error: Error::Internal(format!("snapshot writer failed: {join}")),
                },
            };
            master.do_send(TaskEvent {
                task: number,
                incarnation,
                kind,
            });
        };
        if self.settings.deterministic {
            event(Ok(write()));
            return;
        }
        actix::spawn(async move {
            let written = tokio::task::spawn_blocking(write)
                .await
                .map_err(|e| e.to_string());
            event(written);
        });
    }

    fn on_barrier(
        &mut self,
        ctx: &mut Context<Self>,
        channel: usize,
        id: CheckpointId,
        aligned: bool,
    ) {
        let mode = if aligned {
            CheckpointMode::ExactlyOnce
        } else {
            self.settings.mode
        };
        match self.aligner.on_barrier_in(channel, id, now(), mode) {
            BarrierOutcome::BlockChannel => {
                self.gates[channel].close();
                self.chaos_at(ctx, Moment::DuringAlignment);
            }
            BarrierOutcome::Continue => {}
            BarrierOutcome::Aligned {
                checkpoint,
                alignment,
            } => {
                self.checkpoint(ctx, checkpoint, alignment, aligned);
                for g in &self.gates {
                    g.open();
                }
            }
        }
    }

    /// Carries out a change of the task's input watermark: fire timers, then send it on.
    fn on_watermark_change(&mut self, ctx: &mut Context<Self>, change: WatermarkChange) {
        match change {
            WatermarkChange::Unchanged => {}
            WatermarkChange::Advanced(w) => {
                self.counters.set_watermark(w);
                if self.guarded(ctx, "timers", |l| l.on_watermark(w)).is_some() {
                    self.send_watermark(ctx, WatermarkStatus::At(w));
                }
            }
            WatermarkChange::BecameIdle(advanced) => {
                if let Some(w) = advanced {
                    self.counters.set_watermark(w);
                    if self.guarded(ctx, "timers", |l| l.on_watermark(w)).is_none() {
                        return;
                    }
                    self.send_watermark(ctx, WatermarkStatus::At(w));
                }
                self.send_watermark(ctx, WatermarkStatus::Idle);
            }
        }
    }

    /// Sends a watermark status on, unless an async logic keeps it until the calls issued
    /// before it have emitted.
    fn send_watermark(&mut self, ctx: &mut Context<Self>, status: WatermarkStatus) {
        if self.is_async && self.logic.hold_watermark(status) {
            return;
        }
        self.broadcast(ctx, || Envelope::Watermark(status));
    }

    /// Sends the source's watermark status, if it has a new one.
    fn source_watermark(&mut self, ctx: &mut Context<Self>) {
        let mut statuses = Vec::new();
        self.logic.source_watermark(now(), &mut statuses);
        for status in statuses {
            if let WatermarkStatus::At(w) = status {
                self.counters.set_watermark(w);
            }
            self.broadcast(ctx, || Envelope::Watermark(status));
        }
    }

    fn on_end(&mut self, ctx: &mut Context<Self>, channel: usize) {
        let change = self.watermarks.on_end(channel);
        self.on_watermark_change(ctx, change);
        if self.failed {
            return;
        }
        self.ended[channel] = true;
        if self.ended.iter().all(|e| *e) {
            if self.logic.in_flight() {
                // The end (and any barrier behind it) waits for the calls in flight, whose
                // results belong before it.
                self.end_deferred = true;
                self.hold_inputs();
                return;
            }
            if self
                .guarded(ctx, "end of input", |l| l.end_of_input())
                .is_none()
            {
                return;
            }
            self.send_end(ctx);
        }
    }

    /// Holds every input while the logic asks for it (or the end waits for async calls).
    fn hold_inputs(&self) {
        let held = self.end_deferred || self.logic.input_held();
        for g in &self.gates {
            g.hold(held);
        }
    }

    fn send_end(&mut self, ctx: &mut Context<Self>) {
        if !self.end_sent {
            self.end_sent = true;
            self.broadcast(ctx, || Envelope::End);
            self.report(EventKind::Finished);
        }
    }
}

fn records_of(env: &Envelope) -> usize {
    match env {
        Envelope::Records(_, n, _) => *n,
        _ => 0,
    }
}

/// The write of one task snapshot, to run on a blocking thread (or inline when deterministic):
/// encodes the captured state into the task's reusable buffer and writes it; `permit` (of the
/// job's fence) is held until the write has ended.
fn snapshot_writer(
    storage: Arc<dyn CheckpointStorage>,
    id: CheckpointId,
    task: TaskId,
    encode: EncodeSnapshot,
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    permit: WritePermit,
) -> impl FnOnce() -> Result<(crate::checkpoint::StateHandle, DeferredEncoding)> + Send + 'static {
    move || {
        use std::sync::TryLockError;
        let write_with = |bytes: &mut Vec<u8>| {
            bytes.clear();
            encode(&*storage, id, &task, bytes)
        };
        // Held for the encode and the write. If an earlier snapshot of this task is still
        // being written (a checkpoint that timed out on slow storage), this one does not wait
        // for it: it uses a buffer of its own. A poisoned lock only means an earlier encode
        // panicked; the buffer is cleared anyway.
        let mut bytes = match buf.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return write_with(&mut Vec::new()),
        };
        let written = write_with(&mut bytes);
        drop(permit);
        // Keep the capacity for the next checkpoint unless the state has shrunk a lot.
        if bytes.capacity() > 2 * bytes.len() + (1 << 20) {
            bytes.clear();
            bytes.shrink_to_fit();
        }
        written
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // When the job ends, every task stops itself, even one the master never registered.
        let mut cancel = self.cancel.clone();
        ctx.spawn(
            async move {
                while !*cancel.borrow_and_update() {
                    if cancel.changed().await.is_err() {
                        return;
                    }
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                act.pace.set(Pace::Halt);
                ctx.stop();
            }),
        );
        if !self.is_source() {
            ctx.run_interval(Duration::from_millis(10), |act, ctx| {
                if act.failed {
                    return;
                }
                let now = processing_time();
                if act
                    .guarded(ctx, "timers", |l| l.on_processing_time(now))
                    .is_some()
                {
                    act.flush(ctx, true);
                }
            });
        }
        if self.guarded(ctx, "open", |l| l.open()).is_some() {
            self.span.in_scope(|| {
                tracing::debug!(task = %self.info.task, restored_from = ?self.info.restored_from, "task started");
            });
            if self.is_async {
                // Restored calls may fill the capacity before any input is read.
                self.hold_inputs();
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.span.in_scope(
            || tracing::debug!(task = %self.info.task, failed = self.failed, "task stopped"),
        );
    }
}

impl TaskActor {
    /// The span of a task incarnation's life.
    pub(crate) fn life_span(info: &TaskInfo) -> tracing::Span {
        tracing::info_span!("task", task = %info.task, attempt = info.attempt, restored_from = ?info.restored_from)
    }
}

impl StreamHandler<Input> for TaskActor {
    fn handle(&mut self, input: Input, ctx: &mut Self::Context) {
        if self.failed {
            return;
        }
        match input.envelope {
            Envelope::Records(batch, n, origin) => {
                let started = Instant::now();
                self.counters
                    .records_in
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.watermarks.on_record(input.channel);
                self.first_record();
                if self
                    .guarded(ctx, "process", |l| l.on_records(batch, origin))
                    .is_some()
                {
                    if self.is_async {
                        self.hold_inputs();
                    }
                    self.after_records(ctx);
                }
                self.counters.busy_since(started);
            }
            Envelope::Barrier(id, aligned) => self.on_barrier(ctx, input.channel, id, aligned),
            Envelope::Watermark(status) => {
                let change = self.watermarks.on_status(input.channel, status);
                self.on_watermark_change(ctx, change);
            }
            Envelope::End => self.on_end(ctx, input.channel),
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // A closed input channel: its producer is gone. The job master learns of that from
        // the producer's own exit; this task keeps running until told otherwise.
    }
}

impl StreamHandler<Tick> for TaskActor {
    fn handle(&mut self, _tick: Tick, ctx: &mut Self::Context) {
        if self.failed || self.end_sent || self.halted {
            self.pace.set(Pace::Halt);
            return;
        }
        let batch = self.settings.batch_size;
        // A restored watermark goes out before the records read after the restore.
        self.source_watermark(ctx);
        let started = Instant::now();
        match self.guarded(ctx, "source read", |l| l.poll_source(batch)) {
            Some(SourcePoll::Produced(n)) => {
                self.counters
                    .records_in
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.first_record();
                self.flush(ctx, true);
                self.source_watermark(ctx);
                self.counters.busy_since(started);
            }
            Some(SourcePoll::Idle) => {
                self.source_watermark(ctx);
                self.pace.set(Pace::Idle(self.settings.idle_poll));
            }
            Some(SourcePoll::AtEnd) => {
                self.source_watermark(ctx);
                self.pace.set(Pace::Halt);
                if !self.at_end_reported {
                    self.at_end_reported = true;
                    self.report(EventKind::SourceAtEnd);
                }
            }
            None => {}
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<Trigger> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: Trigger, ctx: &mut Self::Context) {
        if self.failed {
            return;
        }
        if msg.is_final {
            self.halted = true;
            self.pace.set(Pace::Halt);
            if msg.end_input && !self.end_sent {
                self.send_end(ctx);
            }
        }
        self.checkpoint(ctx, msg.checkpoint, Duration::ZERO, msg.savepoint);
    }
}

impl Handler<Complete> for TaskActor {
    type Result = bool;

    fn handle(&mut self, msg: Complete, ctx: &mut Self::Context) -> bool {
        if self.failed {
            return false;
        }
        if self.is_sink && self.chaos_at(ctx, Moment::BetweenPreCommitAndCommit) {
            return false;
        }
        self.guarded(ctx, "checkpoint complete", |l| l.checkpoint_complete(msg.0))
            .is_some()
    }
}

impl Handler<InjectPanic> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: InjectPanic, ctx: &mut Self::Context) {
        if self.failed {
            return;
        }
        let kill = msg.kill;
        let _ = self.guarded(ctx, "chaos kill", |_| -> Result<()> {
            panic!("chaos kill {kill}: injected panic in user code")
        });
    }
}

impl Handler<KillHosted> for TaskActor {
    type Result = ();

    fn handle(&mut self, _msg: KillHosted, _ctx: &mut Self::Context) {
        if !self.failed && !self.logic.kill_hosted() {
            tracing::debug!(task = %self.info.task, "chaos: the task hosts no application actor");
        }
    }
}

impl Handler<Shutdown> for TaskActor {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.pace.set(Pace::Halt);
        ctx.stop();
    }
}

/// The async calls that resolved since the task last looked, handled (and flushed) together.
pub(crate) struct Completions(pub(crate) Vec<Completion>);

impl StreamHandler<Completions> for TaskActor {
    fn handle(&mut self, done: Completions, ctx: &mut Self::Context) {
        if self.failed {
            return;
        }
        let handled = self.guarded(ctx, "async call", |l| {
            done.0.into_iter().try_for_each(|c| l.on_completion(c))
        });
        if handled.is_none() {
            return;
        }
        let mut released = Vec::new();
        self.logic.release_watermarks(&mut released);
        for status in released {
            self.broadcast(ctx, || Envelope::Watermark(status));
        }
        if self.end_deferred && !self.logic.in_flight() {
            self.end_deferred = false;
            if self
                .guarded(ctx, "end of input", |l| l.end_of_input())
                .is_none()
            {
                return;
            }
            self.send_end(ctx);
        }
        self.hold_inputs();
        self.after_records(ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<RunQuery> for TaskActor {
    type Result = Result<AnyReply>;

    /// Runs a query between two batches, inside a panic boundary of its own: a failing query
    /// answers its caller with the error and leaves the task running.
    fn handle(&mut self, msg: RunQuery, _ctx: &mut Self::Context) -> Result<AnyReply> {
        if self.failed {
            return Err(Error::Unavailable {
                what: format!("task {}", self.info.task),
                reason: "it failed and is being restarted".into(),
            });
        }
        let Some(target) = self.logic.as_any_mut() else {
            return Err(Error::Internal(format!(
                "task {} is not an actor operator's",
                self.info.task
            )));
        };
        match catch_unwind(AssertUnwindSafe(|| (msg.0)(target))) {
            Ok(answer) => answer,
            Err(payload) => Err(Error::HandlerFailed {
                handler: format!("a query on task {}", self.info.task),
                source: Box::new(Error::Panic {
                    message: panic_message(payload.as_ref()),
                }),
            }),
        }
    }
}
