//! The job master: one actor per job on the arbiter that started it. It drives the checkpoint
//! coordinator (trigger, acks, timeouts, manifest, completion notices), watches every task
//! actor, and ends the job.
//!
//! Who changes what: only the master changes the coordinator's state and the job's lifecycle;
//! tasks report through [`TaskEvent`]s (their mailbox never carries data, so control is never
//! stuck behind records); the storage is written by tasks (state files, on blocking threads)
//! and by the master (manifests, on a blocking thread).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use super::handle::JobReport;
use super::metrics::{CheckpointStats, JobMetrics};
use super::task::{Complete, Shutdown, TaskActor, Trigger};
use crate::checkpoint::{
    AckOutcome, CheckpointCoordinator, CheckpointId, CheckpointStorage, Manifest, SourceOffset,
    StateHandle, TaskId, TaskStateEntry,
};
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId};
use crate::state::KeyGroupRange;

/// A task's acknowledgement of a checkpoint: its state is durable.
#[derive(Debug)]
pub(crate) struct AckInfo {
    pub(crate) checkpoint: CheckpointId,
    pub(crate) task: usize,
    pub(crate) state: StateHandle,
    pub(crate) key_groups: Option<KeyGroupRange>,
    pub(crate) sources: Vec<(PartitionId, LogOffset)>,
    pub(crate) alignment: Duration,
    pub(crate) capture: Duration,
    pub(crate) acked_at: Instant,
}

/// What tasks tell the master.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum TaskEvent {
    Ack(AckInfo),
    Decline {
        checkpoint: CheckpointId,
        task: usize,
        reason: String,
    },
    Failed {
        task: usize,
        error: Error,
    },
    SourceAtEnd {
        task: usize,
    },
    Finished {
        task: usize,
    },
}

/// The spawned task actors, handed to the master once they all exist.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Register {
    pub(crate) tasks: Vec<(usize, Addr<TaskActor>, tokio::task::JoinHandle<()>)>,
}

/// A task actor's future ended (stopped, panicked outside the boundary, or killed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct TaskExited {
    task: usize,
    outcome: std::result::Result<(), String>,
}

/// Requests from a [`JobHandle`](super::JobHandle).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum Command {
    TriggerCheckpoint,
    Stop,
    Cancel,
}

#[derive(Debug)]
pub(crate) struct TaskSlot {
    pub(crate) id: TaskId,
    pub(crate) is_source: bool,
    pub(crate) addr: Option<Addr<TaskActor>>,
}

pub(crate) struct JobMaster {
    pub(crate) job: String,
    pub(crate) storage: Arc<dyn CheckpointStorage>,
    pub(crate) tasks: Vec<TaskSlot>,
    pub(crate) parallelism: BTreeMap<String, u32>,
    pub(crate) max_parallelism: u32,
    pub(crate) coord: CheckpointCoordinator<AckInfo>,
    pub(crate) registered: bool,
    pub(crate) sources_at_end: HashSet<usize>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) done: Option<oneshot::Sender<Result<JobReport>>>,
    pub(crate) arbiters: Vec<Arbiter>,
    pub(crate) cancel: watch::Sender<bool>,
    pub(crate) started: Instant,
    pub(crate) restored_from: Option<CheckpointId>,
    pub(crate) completed: u64,
    pub(crate) last_completed: Option<CheckpointId>,
    pub(crate) ending: bool,
    pub(crate) tick: Duration,
}

impl JobMaster {
    fn report(&self) -> JobReport {
        JobReport {
            job: self.job.clone(),
            checkpoints_completed: self.completed,
            last_checkpoint: self.last_completed,
            restored_from: self.restored_from,
            elapsed: self.started.elapsed(),
            metrics: self.metrics.snapshot(),
        }
    }

    fn finish(&mut self, ctx: &mut Context<Self>, result: Result<JobReport>) {
        if self.ending {
            return;
        }
        self.ending = true;
        let _ = self.cancel.send(true);
        for t in &self.tasks {
            if let Some(a) = &t.addr {
                a.do_send(Shutdown);
            }
        }
        for arbiter in self.arbiters.drain(..) {
            arbiter.stop();
        }
        match &result {
            Ok(r) => {
                tracing::info!(job = %self.job, checkpoints = r.checkpoints_completed, elapsed = ?r.elapsed, "job finished")
            }
            Err(e) => tracing::error!(job = %self.job, error = %e, "job failed"),
        }
        if let Some(tx) = self.done.take() {
            let _ = tx.send(result);
        }
        ctx.stop();
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if !self.registered || self.ending {
            return;
        }
        let now = Instant::now();
        if let Some(id) = self.coord.timed_out(now) {
            self.abort(ctx, id, "timed out".to_string());
        }
        if let Some(trigger) = self.coord.poll_trigger(now) {
            tracing::debug!(job = %self.job, checkpoint = %trigger.checkpoint, is_final = trigger.is_final, "triggering checkpoint");
            for t in self.tasks.iter().filter(|t| t.is_source) {
                if let Some(a) = &t.addr {
                    a.do_send(Trigger {
                        checkpoint: trigger.checkpoint,
                        is_final: trigger.is_final,
                    });
                }
            }
        }
    }

    fn abort(&mut self, _ctx: &mut Context<Self>, id: CheckpointId, reason: String) {
        if !self.coord.abort(id, Instant::now()) {
            return;
        }
        self.metrics
            .aborted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(job = %self.job, checkpoint = %id, reason = %reason, "checkpoint aborted");
        let storage = Arc::clone(&self.storage);
        let job = self.job.clone();
        actix::spawn(async move {
            let removed = tokio::task::spawn_blocking(move || storage.abort(id)).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(job = %job, checkpoint = %id, error = %e, "could not remove an aborted checkpoint's files");
            }
        });
    }

    fn on_all_acked(
        &mut self,
        ctx: &mut Context<Self>,
        checkpoint: CheckpointId,
        is_final: bool,
        acks: BTreeMap<usize, AckInfo>,
        triggered_at: Instant,
    ) {
        let mut manifest = Manifest::new(&self.job, checkpoint, self.max_parallelism);
        manifest.parallelism = self.parallelism.clone();
        let mut stats = CheckpointStats {
            id: checkpoint,
            triggered_at: SystemTime::now() - triggered_at.elapsed(),
            duration: Duration::ZERO,
            bytes: 0,
            max_alignment: Duration::ZERO,
            max_capture: Duration::ZERO,
            ack_latency: Vec::with_capacity(acks.len()),
            is_final,
        };
        for (task, ack) in acks {
            let id = self.tasks[task].id.clone();
            stats.bytes += ack.state.size;
            stats.max_alignment = stats.max_alignment.max(ack.alignment);
            stats.max_capture = stats.max_capture.max(ack.capture);
            stats.ack_latency.push((
                id.clone(),
                ack.acked_at.saturating_duration_since(triggered_at),
            ));
            for (partition, offset) in ack.sources {
                manifest.sources.push(SourceOffset {
                    task: id.clone(),
                    partition,
                    offset,
                });
            }
            manifest.tasks.push(TaskStateEntry {
                task: id,
                state: ack.state,
                key_groups: ack.key_groups,
            });
        }
        let storage = Arc::clone(&self.storage);
        let write =
            async move { tokio::task::spawn_blocking(move || storage.commit(&manifest)).await };
        ctx.spawn(write.into_actor(self).map(move |written, act, ctx| {
            let result = match written {
                Ok(r) => r,
                Err(join) => Err(Error::Internal(format!("manifest writer failed: {join}"))),
            };
            stats.duration = triggered_at.elapsed();
            act.on_committed(ctx, checkpoint, is_final, result, stats);
        }));
    }

    fn on_committed(
        &mut self,
        ctx: &mut Context<Self>,
        checkpoint: CheckpointId,
        is_final: bool,
        result: Result<()>,
        stats: CheckpointStats,
    ) {
        if self.ending {
            return;
        }
        if let Err(e) = result {
            self.abort(ctx, checkpoint, format!("manifest write failed: {e}"));
            return;
        }
        self.coord.complete(checkpoint, Instant::now());
        self.completed += 1;
        self.last_completed = Some(checkpoint);
        tracing::info!(
            job = %self.job,
            checkpoint = %checkpoint,
            duration_ms = stats.duration.as_millis() as u64,
            bytes = stats.bytes,
            max_alignment_us = stats.max_alignment.as_micros() as u64,
            max_capture_us = stats.max_capture.as_micros() as u64,
            is_final,
            "checkpoint completed"
        );
        match self.metrics.checkpoints.lock() {
            Ok(mut c) => c.push(stats),
            Err(p) => p.into_inner().push(stats),
        }
        let addrs: Vec<Addr<TaskActor>> =
            self.tasks.iter().filter_map(|t| t.addr.clone()).collect();
        if !is_final {
            for a in addrs {
                a.do_send(Complete(checkpoint));
            }
            return;
        }
        // The final checkpoint: wait until every task (every sink) has committed, then end.
        let replies =
            futures::future::join_all(addrs.into_iter().map(move |a| a.send(Complete(checkpoint))));
        ctx.spawn(replies.into_actor(self).map(|replies, act, ctx| {
            if replies.iter().all(|r| matches!(r, Ok(true))) {
                let report = act.report();
                act.finish(ctx, Ok(report));
            } else if !act.ending {
                act.finish(
                    ctx,
                    Err(Error::Internal(
                        "a task failed to commit the final checkpoint".into(),
                    )),
                );
            }
        }));
    }
}

impl Actor for JobMaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.tick, |act, ctx| act.on_tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Never panics. If the master stops without having finished (its System stopped),
        // the handle learns it from the dropped sender.
        let _ = self.cancel.send(true);
    }
}

impl Handler<Register> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Self::Context) {
        let me = ctx.address();
        for (task, addr, join) in msg.tasks {
            self.tasks[task].addr = Some(addr);
            let me = me.clone();
            actix::spawn(async move {
                let outcome = match join.await {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let message = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic with a non-string payload".into());
                        Err(format!("panicked: {message}"))
                    }
                    Err(e) => Err(format!("was cancelled: {e}")),
                };
                me.do_send(TaskExited { task, outcome });
            });
        }
        self.registered = true;
    }
}

impl Handler<TaskExited> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: TaskExited, ctx: &mut Self::Context) {
        if self.ending {
            return;
        }
        let id = self.tasks[msg.task].id.clone();
        let reason = match msg.outcome {
            Ok(()) => "stopped without being asked to".to_string(),
            Err(r) => r,
        };
        self.finish(ctx, Err(Error::TaskStopped { reason }.in_task(&id)));
    }
}

impl Handler<TaskEvent> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: TaskEvent, ctx: &mut Self::Context) {
        if self.ending {
            return;
        }
        match msg {
            TaskEvent::Ack(ack) => {
                let (id, task) = (ack.checkpoint, ack.task);
                match self.coord.on_ack(id, task, ack) {
                    AckOutcome::Stale => {
                        tracing::debug!(job = %self.job, checkpoint = %id, task, "late ack ignored");
                    }
                    AckOutcome::Pending => {}
                    AckOutcome::AllAcked {
                        checkpoint,
                        is_final,
                        acks,
                        triggered_at,
                    } => self.on_all_acked(ctx, checkpoint, is_final, acks, triggered_at),
                }
            }
            TaskEvent::Decline {
                checkpoint,
                task,
                reason,
            } => {
                let id = &self.tasks[task].id;
                let reason = format!("task {id} declined: {reason}");
                self.abort(ctx, checkpoint, reason);
            }
            TaskEvent::Failed { task, error } => {
                let id = self.tasks[task].id.clone();
                self.finish(ctx, Err(error.in_task(&id)));
            }
            TaskEvent::SourceAtEnd { task } => {
                self.sources_at_end.insert(task);
                let sources = self.tasks.iter().filter(|t| t.is_source).count();
                if self.sources_at_end.len() == sources {
                    tracing::info!(job = %self.job, "every source reached the end of its input; taking the final checkpoint");
                    self.coord.request_final();
                }
            }
            TaskEvent::Finished { task } => {
                tracing::debug!(job = %self.job, task = %self.tasks[task].id, "task reached the end of its input");
            }
        }
    }
}

impl Handler<Command> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Command, ctx: &mut Self::Context) {
        match msg {
            Command::TriggerCheckpoint => self.coord.request_now(),
            Command::Stop => {
                tracing::info!(job = %self.job, "graceful stop requested: taking the final checkpoint");
                self.coord.request_final();
            }
            Command::Cancel => self.finish(ctx, Err(Error::Cancelled)),
        }
    }
}
