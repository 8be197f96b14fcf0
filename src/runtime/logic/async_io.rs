//! The logic of an async operator's task ([`AsyncLogic`]): calls of an [`AsyncFunction`] in
//! flight, bounded by the capacity, their results emitted in order or as they resolve, and the
//! inputs of unfinished calls in the snapshot.
//!
//! Invariants: `slots` holds the calls in flight in issue order (sequence numbers increase),
//! `waiting` the inputs that found no room, in arrival order; a snapshot lists the inputs of
//! `slots` then `waiting`, which is exactly the order they are issued in again after a
//! restore. A result enters the output only in `on_completion`, on the task's thread, so a
//! barrier forwarded by the task comes after every result emitted before it.

use std::any::Any;
use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::shared::{
    collector, downcast, operator_capture, Capture, Completion, LogicParams, TaskLogic,
};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::runtime::async_io::{AsyncFunction, AsyncMode, AsyncOptions};
use crate::runtime::channel::{Collector, Envelope, Origin};
use crate::runtime::operator::{Data, TaskInfo};
use crate::runtime::time::WatermarkStatus;
use crate::state::{OperatorListState, OperatorStateBackend, Redistribution, StateValue};

const IN_FLIGHT: &str = "snapflow.async-in-flight";

/// How one call ended, after its retries.
enum Outcome<O> {
    Done(Vec<O>),
    Failed(Error),
    TimedOut,
}

/// A call in flight.
struct Slot<I, O> {
    seq: u64,
    input: I,
    /// Its outputs, once resolved (ordered mode holds them until the calls before resolve).
    done: Option<Vec<O>>,
    task: tokio::task::AbortHandle,
}

/// An async operator's task.
pub(crate) struct AsyncLogic<I, O, F> {
    f: F,
    opts: AsyncOptions,
    info: TaskInfo,
    state: OperatorStateBackend,
    list: Option<OperatorListState<I>>,
    slots: VecDeque<Slot<I, O>>,
    waiting: VecDeque<I>,
    next_seq: u64,
    tx: mpsc::UnboundedSender<Completion>,
    rx: Option<mpsc::UnboundedReceiver<Completion>>,
    out: Collector<O>,
    /// Watermarks kept until every call issued before them has emitted: the first sequence
    /// number not before the watermark, and the watermark.
    held: VecDeque<(u64, WatermarkStatus)>,
}

impl<I, O, F> Drop for AsyncLogic<I, O, F> {
    fn drop(&mut self) {
        // Calls of a task that is gone answer nobody.
        for s in &self.slots {
            s.task.abort();
        }
    }
}

impl<I: Data + StateValue, O: Data, F: AsyncFunction<I, O>> AsyncLogic<I, O, F> {
    pub(crate) fn new(f: F, opts: AsyncOptions, p: LogicParams) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(AsyncLogic {
            out: collector(&p.outputs, p.batch_size, p.info.max_parallelism)?,
            state: OperatorStateBackend::restored(p.restore.operator),
            info: p.info,
            list: None,
            slots: VecDeque::new(),
            waiting: VecDeque::new(),
            next_seq: 0,
            tx,
            rx: Some(rx),
            held: VecDeque::new(),
            f,
            opts,
        })
    }

    /// Starts calls while there is room.
    fn fill(&mut self) {
        while self.slots.len() < self.opts.capacity {
            let Some(input) = self.waiting.pop_front() else {
                return;
            };
            self.issue(input);
        }
    }

    fn issue(&mut self, input: I) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (f, opts, tx, arg) = (self.f.clone(), self.opts, self.tx.clone(), input.clone());
        let call = async move {
            let mut tries = 0;
            let outcome = loop {
                match tokio::time::timeout(opts.timeout, f.call(&arg)).await {
                    Ok(Ok(out)) => break Outcome::Done(out),
                    Ok(Err(e)) if tries >= opts.retries => break Outcome::Failed(e),
                    Err(_) if tries >= opts.retries => break Outcome::TimedOut,
                    _ => {}
                }
                tries += 1;
                tokio::time::sleep(opts.retry_delay).await;
            };
            let _ = tx.send(Completion {
                seq,
                outcome: Box::new(outcome),
            });
        };
        let task = tokio::task::spawn_local(call).abort_handle();
        self.slots.push_back(Slot {
            seq,
            input,
            done: None,
            task,
        });
    }

    /// Emits what may leave now: the resolved prefix (ordered) or the slot `at` (unordered).
    fn emit(&mut self, at: usize) {
        match self.opts.mode {
            AsyncMode::Ordered => {
                while self.slots.front().is_some_and(|s| s.done.is_some()) {
                    if let Some(out) = self.slots.pop_front().and_then(|s| s.done) {
                        out.into_iter().for_each(|o| self.out.emit(o));
                    }
                }
            }
            AsyncMode::Unordered => {
                if let Some(out) = self.slots.remove(at).and_then(|s| s.done) {
                    out.into_iter().for_each(|o| self.out.emit(o));
                }
            }
        }
    }
}

impl<I: Data + StateValue, O: Data, F: AsyncFunction<I, O>> TaskLogic for AsyncLogic<I, O, F> {
    fn open(&mut self) -> Result<()> {
        let list = self
            .state
            .list_state::<I>(IN_FLIGHT, Redistribution::Split)?;
        // Calls in flight at the checkpoint restored from go out again, first.
        self.waiting.extend(list.get(&self.state)?.iter().cloned());
        self.list = Some(list);
        self.fill();
        Ok(())
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, _origin: Option<Origin>) -> Result<()> {
        self.waiting.extend(downcast::<I>(batch)?);
        self.fill();
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<()> {
        Ok(())
    }

    fn capture(&mut self, _checkpoint: CheckpointId) -> Result<Capture> {
        let inputs: Vec<I> = self
            .slots
            .iter()
            .map(|s| s.input.clone())
            .chain(self.waiting.iter().cloned())
            .collect();
        if let Some(list) = &self.list {
            list.update(&mut self.state, inputs)?;
        }
        operator_capture(&self.state)
    }

    fn checkpoint_complete(&mut self, _checkpoint: CheckpointId) -> Result<()> {
        Ok(())
    }

    fn drain(&mut self, all: bool, out: &mut Vec<(usize, Envelope)>) {
        self.out.drain(all, out);
    }

    fn has_buffered(&self) -> bool {
        self.out.has_buffered()
    }

    fn take_completions(&mut self) -> Option<mpsc::UnboundedReceiver<Completion>> {
        self.rx.take()
    }

    fn on_completion(&mut self, c: Completion) -> Result<()> {
        let Ok(at) = self.slots.binary_search_by_key(&c.seq, |s| s.seq) else {
            return Ok(()); // a call of an input already dropped: none here
        };
        let outcome = c
            .outcome
            .downcast::<Outcome<O>>()
            .map_err(|_| Error::Internal("an async completion of another type".into()))?;
        let out = match *outcome {
            Outcome::Done(out) => out,
            Outcome::TimedOut => self.f.timeout(&self.slots[at].input)?,
            Outcome::Failed(e) => {
                return Err(Error::HandlerFailed {
                    handler: format!("an async call of task {}", self.info.task),
                    source: Box::new(e),
                })
            }
        };
        self.slots[at].done = Some(out);
        self.emit(at);
        self.fill();
        Ok(())
    }

    fn hold_watermark(&mut self, status: WatermarkStatus) -> bool {
        if !self.in_flight() && self.held.is_empty() {
            return false;
        }
        // The inputs that arrived before the watermark get sequence numbers below this.
        let bound = self.next_seq + self.waiting.len() as u64;
        self.held.push_back((bound, status));
        true
    }

    fn release_watermarks(&mut self, out: &mut Vec<WatermarkStatus>) {
        // The oldest call not yet emitted (slots stay in issue order in both modes).
        let lowest = self.slots.front().map_or(self.next_seq, |s| s.seq);
        while self.held.front().is_some_and(|(bound, _)| *bound <= lowest) {
            if let Some((_, status)) = self.held.pop_front() {
                out.push(status);
            }
        }
    }

    fn input_held(&self) -> bool {
        // Records that found no room wait here (at most a batch): read nothing more until they
        // are issued. With the calls at capacity but nothing waiting, the next envelope is
        // still read, so a barrier passes as soon as every record before it has been taken.
        !self.waiting.is_empty()
    }

    fn in_flight(&self) -> bool {
        !self.slots.is_empty() || !self.waiting.is_empty()
    }
}
