//! The job master: the root of a job's supervisor tree, one actor on the arbiter that started
//! the job. It starts and supervises the task actors and the checkpoint coordinator actor,
//! relays between them, runs the chaos monkey, restarts failed failover regions from the
//! latest complete checkpoint as the restart strategy decides, and ends the job.
//!
//! States of a failover region: *running* → (a task fails) → *down* (its actors aborted, its
//! channels dropped, the checkpoint in flight aborted) → after the strategy's delay,
//! *restoring* (latest complete checkpoint read) → *running* again with fresh actors (a new
//! incarnation of each task). Events from an older incarnation are ignored. Who changes what:
//! only the master changes task slots, regions and the job's lifecycle; only the coordinator
//! actor changes the coordinator core.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::coordinator::{now, CoordinatorActor, FromCoordinator, ToCoordinator};
use super::events::{JobEnd, JobEvent};
use super::handle::JobReport;
use super::logic::RestoreState;
use super::metrics::JobMetrics;
use super::task::{Complete, InjectPanic, Shutdown, TaskActor, Trigger};
use super::topology::{Spawned, Topology};
use crate::chaos::{Kill, MonkeyState};
use crate::checkpoint::{CheckpointId, StateHandle};
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId};
use crate::state::KeyGroupRange;
use crate::supervision::{RestartDecision, RestartTracker};

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
    /// The keyed state the task encoded itself for this checkpoint.
    pub(crate) task_encoding: crate::state::DeferredEncoding,
    pub(crate) acked_at: Instant,
}

/// What a task reports.
#[derive(Debug)]
pub(crate) enum EventKind {
    Ack(AckInfo),
    /// The task could not write its state for `checkpoint`.
    Decline {
        checkpoint: CheckpointId,
        error: Error,
    },
    Failed {
        error: Error,
    },
    SourceAtEnd,
    Finished,
    FirstRecord,
}

/// A report from one incarnation of a task.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TaskEvent {
    pub(crate) task: usize,
    pub(crate) incarnation: u32,
    pub(crate) kind: EventKind,
}

/// Starts the job's tasks (sent once by `Job::start`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Launch {
    pub(crate) restore: HashMap<usize, RestoreState>,
    pub(crate) restored_from: Option<CheckpointId>,
    /// The first checkpoint id of this run: above every id the storage already holds.
    pub(crate) first: CheckpointId,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct TaskExited {
    task: usize,
    incarnation: u32,
    outcome: std::result::Result<(), String>,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct CoordinatorExited {
    incarnation: u32,
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
    pub(crate) addr: Option<Addr<TaskActor>>,
    pub(crate) abort: Option<AbortHandle>,
    pub(crate) incarnation: u32,
}

pub(crate) struct JobMaster {
    pub(crate) topo: Arc<Topology>,
    pub(crate) tasks: Vec<TaskSlot>,
    pub(crate) coordinator: Option<Addr<CoordinatorActor>>,
    pub(crate) coordinator_abort: Option<AbortHandle>,
    pub(crate) coordinator_incarnation: u32,
    pub(crate) registered: bool,
    pub(crate) sources_at_end: HashSet<usize>,
    pub(crate) down: HashSet<usize>,
    pub(crate) tracker: RestartTracker,
    pub(crate) last_triggered: Option<CheckpointId>,
    pub(crate) last_completed: Option<CheckpointId>,
    pub(crate) completed: u64,
    pub(crate) final_requested: bool,
    pub(crate) stop_requested: bool,
    /// The final checkpoint triggered last, and whether its sources ended their input first
    /// (end of input) or not (a stop).
    pub(crate) final_trigger: Option<(CheckpointId, bool)>,
    /// The newest final checkpoint that completed.
    pub(crate) final_done: Option<CheckpointId>,
    pub(crate) events: Vec<JobEvent>,
    pub(crate) event_sink: Option<Recipient<JobEvent>>,
    pub(crate) monkey: Option<MonkeyState>,
    pub(crate) monkey_due: Option<Instant>,
    pub(crate) failure_at: HashMap<usize, Instant>,
    pub(crate) failed_while_down: HashMap<usize, (usize, Error)>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) done: watch::Sender<Option<Result<JobReport>>>,
    pub(crate) arbiters: Vec<Arbiter>,
    pub(crate) cancel: watch::Sender<bool>,
    pub(crate) cancel_rx: watch::Receiver<bool>,
    pub(crate) started: Instant,
    pub(crate) restored_from: Option<CheckpointId>,
    pub(crate) ending: bool,
}

impl JobMaster {
    fn job(&self) -> &str {
        &self.topo.name
    }

    fn emit(&mut self, event: JobEvent) {
        tracing::debug!(job = %self.topo.name, event = ?event, "job event");
        if let Some(r) = &self.event_sink {
            r.do_send(event.clone());
        }
        self.events.push(event);
    }

    fn report(&self, end: JobEnd) -> JobReport {
        JobReport {
            job: self.topo.name.clone(),
            end,
            checkpoints_completed: self.completed,
            last_checkpoint: self.last_completed,
            restored_from: self.restored_from,
            restarts: self.tracker.restarts(),
            kills: self.monkey_kills(),
            elapsed: self.started.elapsed(),
            metrics: self.metrics.snapshot(),
            events: self.events.clone(),
        }
    }

    fn monkey_kills(&self) -> u32 {
        self.monkey.as_ref().map(|m| m.kills).unwrap_or(0)
    }

    /// Ends the job: stops every actor, fences off checkpoint writes, and reports `result`
    /// once every write the job started has ended and every task actor is gone (the fence's
    /// invariant).
    fn finish(&mut self, ctx: &mut Context<Self>, result: Result<JobEnd>) {
        if self.ending {
            return;
        }
        self.ending = true;
        self.topo.fence.close();
        let _ = self.cancel.send(true);
        for t in &self.tasks {
            if let Some(a) = &t.addr {
                a.do_send(Shutdown);
            }
        }
        if let Some(a) = &self.coordinator_abort {
            a.abort();
        }
        for arbiter in self.arbiters.drain(..) {
            arbiter.stop();
        }
        let result = match result {
            Ok(end) => {
                self.emit(JobEvent::JobFinished { end });
                tracing::info!(job = %self.job(), end = ?end, checkpoints = self.completed, restarts = self.tracker.restarts(), "job finished");
                Ok(self.report(end))
            }
            Err(e) => {
                self.emit(JobEvent::JobFailed {
                    error: e.to_string(),
                });
                tracing::error!(job = %self.job(), error = %e, "job failed");
                Err(e)
            }
        };
        let fence = Arc::clone(&self.topo.fence);
        let writes = fence.in_flight();
        if writes > 0 {
            tracing::debug!(job = %self.job(), permits = writes, "waiting for the job's writes and task actors to end");
        }
        ctx.spawn(
            async move {
                fence.drained().await;
                result
            }
            .into_actor(self)
            .map(|result, act, ctx| {
                act.done.send_replace(Some(result));
                ctx.stop();
            }),
        );
    }

    fn live(&self, task: usize) -> bool {
        !self.down.contains(&self.topo.regions[task]) && self.tasks[task].addr.is_some()
    }

    fn current(&self, task: usize, incarnation: u32) -> bool {
        task < self.tasks.len() && self.tasks[task].incarnation == incarnation
    }

    fn to_coordinator(&self, msg: ToCoordinator) {
        if let Some(c) = &self.coordinator {
            c.do_send(msg);
        }
    }

    fn start_coordinator(&mut self, ctx: &mut Context<Self>, first: CheckpointId) {
        let topo = &self.topo;
        let coordinator = CoordinatorActor::new(
            topo.name.clone(),
            topo.config.checkpoints,
            first,
            Arc::clone(&topo.storage),
            ctx.address(),
            topo.tasks.iter().map(|t| t.id.clone()).collect(),
            topo.vertices
                .iter()
                .zip(&topo.parallelism)
                .map(|(v, p)| (v.name.clone(), *p))
                .collect(),
            topo.config.max_parallelism,
            topo.config.deterministic,
            Arc::clone(&topo.chaos),
            Arc::clone(&topo.manifest_gate),
            Arc::clone(&topo.fence),
            (
                topo.config.tolerable_failed_checkpoints,
                topo.config.checkpoint_failure_backoff,
            ),
        );
        let cctx: Context<CoordinatorActor> = Context::new();
        let addr = cctx.address();
        let join = actix::spawn(cctx.into_future(coordinator));
        self.coordinator_incarnation += 1;
        let incarnation = self.coordinator_incarnation;
        self.coordinator_abort = Some(join.abort_handle());
        let me = ctx.address();
        actix::spawn(async move {
            let _ = join.await;
            me.do_send(CoordinatorExited { incarnation });
        });
        if self.final_requested {
            addr.do_send(ToCoordinator::RequestFinal);
        }
        // No checkpoint before every task of the job is registered (a trigger sent then would
        // reach no source, and the checkpoint would wait for its timeout), nor while a region
        // is down.
        if !self.down.is_empty() || !self.registered {
            addr.do_send(ToCoordinator::Hold(true));
        }
        self.coordinator = Some(addr);
    }

    /// Creates the actors of `tasks` with `restore` and registers them when they exist.
    fn spawn_tasks(
        &mut self,
        ctx: &mut Context<Self>,
        tasks: Vec<usize>,
        restore: HashMap<usize, RestoreState>,
        restored_from: Option<CheckpointId>,
        region: Option<usize>,
    ) {
        if self.ending {
            return;
        }
        let next = self
            .last_triggered
            .or(restored_from)
            .map(|c| c.0 + 1)
            .unwrap_or(1);
        let incarnations: HashMap<usize, u32> = tasks
            .iter()
            .map(|t| (*t, self.tasks[*t].incarnation))
            .collect();
        let pending = match self.topo.spawn(
            &tasks,
            restore,
            restored_from,
            CheckpointId(next),
            &incarnations,
            &ctx.address(),
            &self.cancel_rx,
        ) {
            Ok(p) => p,
            Err(e) => return self.finish(ctx, Err(e)),
        };
        let collect = async move {
            let mut out: Vec<(usize, Spawned)> = Vec::with_capacity(pending.len());
            for (t, rx) in pending {
                match rx.await {
                    Ok(s) => out.push((t, s)),
                    Err(_) => {
                        return Err(Error::Internal(
                            "an arbiter dropped a task before starting it".into(),
                        ))
                    }
                }
            }
            Ok(out)
        };
        ctx.spawn(
            collect
                .into_actor(self)
                .map(move |spawned, act, ctx| match spawned {
                    Ok(spawned) => act.register(ctx, spawned, region, restored_from),
                    Err(e) => act.finish(ctx, Err(e)),
                }),
        );
    }

    fn register(
        &mut self,
        ctx: &mut Context<Self>,
        spawned: Vec<(usize, Spawned)>,
        region: Option<usize>,
        restored_from: Option<CheckpointId>,
    ) {
        let me = ctx.address();
        let mut ids = Vec::with_capacity(spawned.len());
        for (task, (addr, join)) in spawned {
            if self.ending {
                addr.do_send(Shutdown);
                join.abort();
                continue;
            }
            let incarnation = self.tasks[task].incarnation;
            self.tasks[task].addr = Some(addr);
            self.tasks[task].abort = Some(join.abort_handle());
            ids.push(self.topo.tasks[task].id.clone());
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
                    Err(_) => Err("was stopped from outside (its future was aborted)".to_string()),
                };
                me.do_send(TaskExited {
                    task,
                    incarnation,
                    outcome,
                });
            });
        }
        match region {
            Some(r) => {
                self.down.remove(&r);
                self.emit(JobEvent::Restored {
                    tasks: ids,
                    checkpoint: restored_from,
                });
                if self.down.is_empty() && self.registered {
                    self.to_coordinator(ToCoordinator::Hold(false));
                }
                if let Some((task, error)) = self.failed_while_down.remove(&r) {
                    self.on_failure(ctx, task, error);
                } else if let Some(done) = restored_from.filter(|c| Some(*c) == self.final_done) {
                    self.finish_after_final(ctx, done);
                }
            }
            None => {
                self.registered = true;
                self.emit(JobEvent::Started { restored_from });
                // Failures reported while the job was starting: restart their regions now that
                // every actor is known (the coordinator stays held meanwhile).
                let early: Vec<(usize, Error)> =
                    self.failed_while_down.drain().map(|(_, f)| f).collect();
                if early.is_empty() {
                    if self.down.is_empty() {
                        self.to_coordinator(ToCoordinator::Hold(false));
                    }
                } else {
                    for (task, error) in early {
                        self.on_failure(ctx, task, error);
                    }
                }
            }
        }
    }

    fn on_failure(&mut self, ctx: &mut Context<Self>, task: usize, error: Error) {
        if self.ending {
            return;
        }
        let region = self.topo.regions[task];
        if self.down.contains(&region) || !self.registered {
            // A task failed before its region (or, while the job starts, the job) was
            // registered (in open, say): its actors are not all known yet, so none could be
            // aborted. Handle it once they are (`register`).
            self.failed_while_down
                .entry(region)
                .or_insert((task, error));
            return;
        }
        let id = self.topo.tasks[task].id.clone();
        self.emit(JobEvent::TaskFailed {
            task: id.clone(),
            error: error.to_string(),
        });
        match self.tracker.on_failure(now()) {
            RestartDecision::GiveUp { reason } => {
                tracing::error!(job = %self.job(), task = %id, reason = %reason, "restart strategy gave up");
                self.finish(ctx, Err(error.in_task(&id)));
            }
            RestartDecision::Restart { delay, attempt } => {
                let tasks = self.topo.region_of(task);
                self.down.insert(region);
                for &t in &tasks {
                    if let Some(a) = self.tasks[t].abort.take() {
                        a.abort();
                    }
                    self.tasks[t].addr = None;
                    self.tasks[t].incarnation += 1;
                    self.sources_at_end.remove(&t);
                }
                self.to_coordinator(ToCoordinator::AbortInFlight {
                    reason: format!("task {id} failed"),
                });
                self.to_coordinator(ToCoordinator::Hold(true));
                if self.final_requested && !self.stop_requested {
                    // Restarted sources must read again before the input can end.
                    self.final_requested = false;
                    self.to_coordinator(ToCoordinator::CancelFinal);
                } else {
                    // A final checkpoint may have completed without every commit: allow the
                    // next final checkpoint.
                    self.to_coordinator(ToCoordinator::Rearm);
                }
                let ids: Vec<_> = tasks
                    .iter()
                    .map(|t| self.topo.tasks[*t].id.clone())
                    .collect();
                tracing::warn!(job = %self.job(), task = %id, error = %error, attempt, delay = ?delay, region_tasks = ids.len(), "restarting failover region");
                self.emit(JobEvent::Restarting {
                    tasks: ids,
                    attempt,
                    delay,
                });
                self.failure_at.insert(region, now());
                ctx.run_later(delay, move |act, ctx| {
                    act.restore_region(ctx, region, tasks)
                });
            }
        }
    }

    fn restore_region(&mut self, ctx: &mut Context<Self>, region: usize, tasks: Vec<usize>) {
        if self.ending {
            return;
        }
        let topo = &self.topo;
        let names = topo
            .vertices
            .iter()
            .zip(&topo.parallelism)
            .map(|(v, p)| (v.name.clone(), *p))
            .collect();
        let triples = tasks
            .iter()
            .map(|t| (*t, topo.tasks[*t].vertex, topo.tasks[*t].index))
            .collect();
        let plan = Topology::plan_restore(
            Arc::clone(&topo.storage),
            Arc::clone(&topo.manifest_gate),
            names,
            triples,
            topo.config.deterministic,
            topo.config.when_no_checkpoint_verifies,
        );
        ctx.spawn(
            plan.into_actor(self)
                .map(move |planned, act, ctx| match planned {
                    Ok((restored_from, restore)) => {
                        act.spawn_tasks(ctx, tasks, restore, restored_from, Some(region))
                    }
                    Err(e) => act.finish(ctx, Err(e)),
                }),
        );
    }

    /// The final checkpoint `checkpoint` is complete: once every task is running, asks each to
    /// commit it and ends the job when all have. Called when it completes, and again when a
    /// region that failed meanwhile has been restored from it (its sinks committed it in their
    /// recovery), so that a failure after the final manifest was written does not need another
    /// final checkpoint, which under steady failures might never complete in time.
    fn finish_after_final(&mut self, ctx: &mut Context<Self>, checkpoint: CheckpointId) {
        if self.ending || !self.down.is_empty() || self.final_done != Some(checkpoint) {
            return;
        }
        let Some(addrs) = self
            .tasks
            .iter()
            .map(|t| t.addr.clone())
            .collect::<Option<Vec<Addr<TaskActor>>>>()
        else {
            return;
        };
        let replies =
            futures::future::join_all(addrs.into_iter().map(move |a| a.send(Complete(checkpoint))));
        ctx.spawn(replies.into_actor(self).map(move |replies, act, ctx| {
            if act.down.is_empty() && replies.iter().all(|r| matches!(r, Ok(true))) {
                // The sources of the final checkpoint ended their input first, or (a stop)
                // they did not.
                let end = match act.final_trigger {
                    Some((id, false)) if id == checkpoint => JobEnd::Stopped,
                    _ => JobEnd::InputEnded,
                };
                act.finish(ctx, Ok(end));
            } else {
                // A task failed while committing: its region is restored (from this
                // checkpoint, whose transactions its sinks then commit), and this is tried
                // again; or a newer final checkpoint ends the job.
                tracing::warn!(job = %act.job(), "a task failed to commit the final checkpoint; waiting for its recovery");
            }
        }));
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if !self.registered || self.ending {
            return;
        }
        let Some(monkey) = self.monkey.as_mut() else {
            return;
        };
        let t = now();
        let due = *self.monkey_due.get_or_insert(t + monkey.next_after);
        if t < due {
            return;
        }
        let Some(kill) = monkey.next_kill() else {
            self.monkey_due = Some(t + Duration::from_secs(3600));
            return;
        };
        let number = monkey.kills;
        let seed = monkey.config.seed;
        let pick = monkey.next_u64();
        self.monkey_due = Some(t + monkey.draw_interval());
        let vertices = monkey.config.vertices.clone();
        let candidates: Vec<usize> = (0..self.tasks.len())
            .filter(|t| self.live(*t))
            .filter(|t| vertices.is_empty() || vertices.contains(&self.topo.tasks[*t].id.vertex))
            .collect();
        let target =
            (!candidates.is_empty()).then(|| candidates[(pick % candidates.len() as u64) as usize]);
        let (task, how) = match kill {
            Kill::PanicInUserCode => {
                let Some(t) = target else { return };
                if let Some(a) = &self.tasks[t].addr {
                    a.do_send(InjectPanic { kill: number });
                }
                (Some(t), "panic in user code".to_string())
            }
            Kill::StopFromOutside => {
                let Some(t) = target else { return };
                if let Some(a) = &self.tasks[t].abort {
                    a.abort();
                }
                (Some(t), "stop from outside".to_string())
            }
            Kill::Coordinator => {
                if let Some(a) = &self.coordinator_abort {
                    a.abort();
                }
                (None, "coordinator stopped from outside".to_string())
            }
            Kill::At(moment) => {
                self.topo.chaos.arm(moment, number);
                (None, format!("armed at {moment:?}"))
            }
        };
        let task_id = task.map(|t| self.topo.tasks[t].id.clone());
        tracing::warn!(job = %self.job(), seed, kill = number, target = ?task_id, how = %how, "chaos kill");
        self.emit(JobEvent::ChaosKill {
            kill: number,
            task: task_id,
            how,
        });
        let _ = ctx;
    }
}

impl Actor for JobMaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_millis(5), |act, ctx| act.on_tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Never panics. If the master stops without having finished (its System stopped),
        // the handle learns it from the dropped sender.
        let _ = self.cancel.send(true);
    }
}

impl Handler<Launch> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Launch, ctx: &mut Self::Context) {
        self.restored_from = msg.restored_from;
        let first = msg.first;
        if first.0 > 1 {
            self.last_triggered = Some(CheckpointId(first.0 - 1));
        }
        self.start_coordinator(ctx, first);
        let all: Vec<usize> = (0..self.topo.tasks.len()).collect();
        self.spawn_tasks(ctx, all, msg.restore, msg.restored_from, None);
    }
}

impl Handler<TaskExited> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: TaskExited, ctx: &mut Self::Context) {
        if self.ending || !self.current(msg.task, msg.incarnation) {
            return;
        }
        let reason = match msg.outcome {
            Ok(()) => "stopped without being asked to".to_string(),
            Err(r) => r,
        };
        self.on_failure(ctx, msg.task, Error::TaskStopped { reason });
    }
}

impl Handler<CoordinatorExited> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: CoordinatorExited, ctx: &mut Self::Context) {
        if self.ending || msg.incarnation != self.coordinator_incarnation {
            return;
        }
        tracing::warn!(job = %self.job(), "checkpoint coordinator failed; restarting it");
        self.coordinator = None;
        let storage = Arc::clone(&self.topo.storage);
        let inline = self.topo.config.deterministic;
        // The new coordinator's ids must be above every id the storage holds (complete or
        // not), so that none is reused; no checkpoint needs to be read for that.
        let read = async move {
            if inline {
                storage.max_id()
            } else {
                tokio::task::spawn_blocking(move || storage.max_id())
                    .await
                    .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
            }
        };
        ctx.spawn(read.into_actor(self).map(|latest, act, ctx| {
            let latest = match latest {
                Ok(l) => l,
                Err(e) => return act.finish(ctx, Err(e)),
            };
            let after = latest.max(act.last_triggered).map(|c| c.0).unwrap_or(0);
            act.start_coordinator(ctx, CheckpointId(after + 1));
            act.emit(JobEvent::CoordinatorRestarted {
                resumed_after: latest,
            });
        }));
    }
}

impl Handler<TaskEvent> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: TaskEvent, ctx: &mut Self::Context) {
        if self.ending || !self.current(msg.task, msg.incarnation) {
            return;
        }
        let task = msg.task;
        match msg.kind {
            EventKind::Ack(ack) => self.to_coordinator(ToCoordinator::Ack(ack)),
            EventKind::Decline { checkpoint, error } => {
                let reason = format!(
                    "task {} could not write its state: {error}",
                    self.topo.tasks[task].id
                );
                self.to_coordinator(ToCoordinator::Decline {
                    checkpoint,
                    reason,
                    error: Some(error.in_task(&self.topo.tasks[task].id)),
                });
            }
            EventKind::Failed { error } => self.on_failure(ctx, task, error),
            EventKind::SourceAtEnd => {
                self.sources_at_end.insert(task);
                let sources = self.topo.tasks.iter().filter(|t| t.is_source).count();
                if self.sources_at_end.len() == sources && !self.final_requested {
                    tracing::info!(job = %self.job(), "every source reached the end of its input; taking the final checkpoint");
                    self.final_requested = true;
                    self.to_coordinator(ToCoordinator::RequestFinal);
                }
            }
            EventKind::Finished => {
                tracing::debug!(job = %self.job(), task = %self.topo.tasks[task].id, "task reached the end of its input");
            }
            EventKind::FirstRecord => {
                // A recovery ends when a restored task processes a record; when the region has
                // keyed tasks, one of them (they restore the bulk of the state).
                let region = self.topo.regions[task];
                let keyed_region = self
                    .topo
                    .region_of(task)
                    .iter()
                    .any(|t| self.topo.tasks[*t].is_keyed);
                if keyed_region && !self.topo.tasks[task].is_keyed {
                    return;
                }
                if let Some(at) = self.failure_at.remove(&region) {
                    let took = now().saturating_duration_since(at);
                    match self.metrics.recoveries.lock() {
                        Ok(mut r) => r.push(took),
                        Err(p) => p.into_inner().push(took),
                    }
                }
            }
        }
    }
}

impl Handler<FromCoordinator> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: FromCoordinator, ctx: &mut Self::Context) {
        if self.ending {
            return;
        }
        match msg {
            FromCoordinator::Triggered {
                checkpoint,
                is_final,
            } => {
                self.last_triggered = Some(checkpoint);
                self.emit(JobEvent::CheckpointTriggered {
                    checkpoint,
                    is_final,
                });
                // A stop ends no input: its final checkpoint is taken without end-of-input.
                let end_input = is_final && !self.stop_requested;
                if is_final {
                    self.final_trigger = Some((checkpoint, end_input));
                }
                // A source that is not running cannot take the barrier: say so at once rather
                // than let the checkpoint wait for its timeout (a trigger sent just before a
                // region went down).
                if let Some(t) = (0..self.topo.tasks.len())
                    .find(|&t| self.topo.tasks[t].is_source && !self.live(t))
                {
                    let reason = format!("source {} is not running", self.topo.tasks[t].id);
                    self.to_coordinator(ToCoordinator::Decline {
                        checkpoint,
                        reason,
                        error: None,
                    });
                    return;
                }
                for (t, spec) in self.topo.tasks.iter().enumerate() {
                    if spec.is_source && self.live(t) {
                        if let Some(a) = &self.tasks[t].addr {
                            a.do_send(Trigger {
                                checkpoint,
                                is_final,
                                end_input,
                            });
                        }
                    }
                }
            }
            FromCoordinator::Failing { error } => {
                tracing::error!(job = %self.job(), error = %error, "too many checkpoint failures in a row");
                self.finish(ctx, Err(error));
            }
            FromCoordinator::Aborted { checkpoint, reason } => {
                self.metrics
                    .aborted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(job = %self.job(), checkpoint = %checkpoint, reason = %reason, "checkpoint aborted");
                self.emit(JobEvent::CheckpointAborted { checkpoint, reason });
            }
            FromCoordinator::Completed {
                checkpoint,
                is_final,
                stats,
            } => {
                self.completed += 1;
                self.last_completed = Some(checkpoint);
                tracing::info!(
                    job = %self.job(),
                    checkpoint = %checkpoint,
                    duration_ms = stats.duration.as_millis() as u64,
                    bytes = stats.bytes,
                    max_alignment_us = stats.max_alignment.as_micros() as u64,
                    max_capture_us = stats.max_capture.as_micros() as u64,
                    max_task_encoding_us = stats.max_task_encoding.as_micros() as u64,
                    is_final,
                    "checkpoint completed"
                );
                match self.metrics.checkpoints.lock() {
                    Ok(mut c) => c.push(stats),
                    Err(p) => p.into_inner().push(stats),
                }
                self.emit(JobEvent::CheckpointCompleted { checkpoint });
                let addrs: Vec<Addr<TaskActor>> =
                    self.tasks.iter().filter_map(|t| t.addr.clone()).collect();
                if !is_final {
                    for a in addrs {
                        a.do_send(Complete(checkpoint));
                    }
                    return;
                }
                self.final_done = Some(checkpoint);
                self.finish_after_final(ctx, checkpoint);
            }
        }
    }
}

impl Handler<Command> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Command, ctx: &mut Self::Context) {
        match msg {
            Command::TriggerCheckpoint => self.to_coordinator(ToCoordinator::RequestNow),
            Command::Stop => {
                if self.ending || self.stop_requested {
                    return;
                }
                tracing::info!(job = %self.job(), "graceful stop requested: taking the final checkpoint");
                self.emit(JobEvent::StopRequested);
                self.stop_requested = true;
                self.final_requested = true;
                self.to_coordinator(ToCoordinator::RequestFinal);
            }
            Command::Cancel => {
                if self.ending {
                    return;
                }
                tracing::info!(job = %self.job(), "cancel requested");
                self.emit(JobEvent::CancelRequested);
                self.finish(ctx, Ok(JobEnd::Cancelled));
            }
        }
    }
}
