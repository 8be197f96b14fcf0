//! The job master: the job's supervisor, an actor under the job root (`root.rs`) on the
//! arbiter that started the job. It starts and watches the task actors and the checkpoint
//! coordinator actor, relays between them, carries out the chaos kills the root sends it, and
//! carries out the decisions of the pure supervision core (`supervision::tree`: restart a
//! region, restart the job, fail), and ends the job by reporting to the root.
//!
//! A master may die (a bug, or a chaos kill): its actors then end with it (each task stops
//! when the master's cancel channel closes; the coordinator is aborted when the master is
//! dropped), and the root starts a new incarnation that restores the whole job. So nothing a
//! report needs lives only here: events and counters go to the shared `Ledger`.
//!
//! States of a failover region (kept by the core): *running* → (a task fails) → *down* (its
//! actors aborted, its channels dropped, the checkpoint in flight aborted) → after the
//! strategy's delay, *restoring* (latest complete checkpoint read) → *running* again with fresh
//! actors (a new incarnation of the region). Events from an older incarnation are ignored. Who
//! changes what: only the master changes task slots and the job's lifecycle, only through the
//! core the regions; only the coordinator actor changes the coordinator core.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::events::{JobEnd, JobEvent};
use super::ledger::Ledger;
use super::logic::RestoreState;
use super::messages::{
    now, Complete, InjectPanic, KillHosted, MasterNote, MasterNoteKind, Shutdown, Strike,
    ToCoordinator, Trigger,
};
use super::metrics::JobMetrics;
use super::task::TaskActor;
use super::topology::{Role, Spawned, Topology};
use crate::chaos::Kill;
use crate::checkpoint::coordinator::actor::CoordinatorActor;
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::supervision::tree::{Decision, SupervisionCore};
use crate::supervision::RestartTracker;

mod handlers;

/// Starts the job's tasks (sent once to each master incarnation by the job root).
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

#[derive(Debug)]
pub(crate) struct TaskSlot {
    pub(crate) addr: Option<Addr<TaskActor>>,
    pub(crate) abort: Option<AbortHandle>,
}

/// Aborts the coordinator's future when dropped: a master that dies takes its coordinator
/// with it (its task actors stop by themselves when the master's cancel channel closes).
#[derive(Debug)]
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct JobMaster {
    pub(crate) topo: Arc<Topology>,
    /// This master's incarnation under the root (from 1).
    incarnation: u32,
    root: Recipient<MasterNote>,
    ledger: Arc<Ledger>,
    pub(crate) tasks: Vec<TaskSlot>,
    pub(crate) coordinator: Option<Addr<CoordinatorActor>>,
    coordinator_abort: Option<AbortOnDrop>,
    /// The coordinator's restart budget ([`JobConfig::coordinator_restart`](crate::JobConfig)).
    coordinator_tracker: RestartTracker,
    pub(crate) coordinator_incarnation: u32,
    pub(crate) sources_at_end: HashSet<usize>,
    /// The supervision state of the regions and the job; decides every restart.
    pub(crate) sup: SupervisionCore<(usize, Error)>,
    pub(crate) last_triggered: Option<CheckpointId>,
    pub(crate) final_requested: bool,
    pub(crate) stop_requested: bool,
    /// The final checkpoint triggered last, and whether its sources ended their input first
    /// (end of input) or not (a stop).
    pub(crate) final_trigger: Option<(CheckpointId, bool)>,
    /// The newest final checkpoint that completed.
    pub(crate) final_done: Option<CheckpointId>,
    pub(crate) failure_at: HashMap<usize, Instant>,
    /// The tracing span of each checkpoint in flight (trigger to completion or abort).
    pub(crate) checkpoint_spans: HashMap<CheckpointId, tracing::Span>,
    /// The tracing span of each region being restored (decision to running again).
    pub(crate) restore_spans: HashMap<usize, tracing::Span>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) cancel: watch::Sender<bool>,
    pub(crate) cancel_rx: watch::Receiver<bool>,
    pub(crate) ending: bool,
}

impl JobMaster {
    /// Incarnation `incarnation` of the master of `topo`, not started yet, reporting to
    /// `root`; `seed` seeds the restart strategies' jitter.
    pub(crate) fn create(
        topo: Arc<Topology>,
        incarnation: u32,
        root: Recipient<MasterNote>,
        ledger: Arc<Ledger>,
        metrics: Arc<JobMetrics>,
        seed: u64,
    ) -> JobMaster {
        let (cancel, cancel_rx) = watch::channel(false);
        let regions = topo.regions.iter().max().map_or(0, |r| r + 1);
        JobMaster {
            incarnation,
            root,
            ledger,
            tasks: topo
                .tasks
                .iter()
                .map(|_| TaskSlot {
                    addr: None,
                    abort: None,
                })
                .collect(),
            coordinator: None,
            coordinator_abort: None,
            coordinator_tracker: RestartTracker::new(topo.config.coordinator_restart.clone(), seed),
            coordinator_incarnation: 0,
            sources_at_end: HashSet::new(),
            sup: SupervisionCore::new(
                regions,
                topo.config.restart.clone(),
                topo.config.job_restart.clone(),
                seed,
            ),
            last_triggered: None,
            final_requested: false,
            stop_requested: false,
            final_trigger: None,
            final_done: None,
            failure_at: HashMap::new(),
            checkpoint_spans: HashMap::new(),
            restore_spans: HashMap::new(),
            metrics,
            cancel,
            cancel_rx,
            ending: false,
            topo,
        }
    }

    fn job(&self) -> &str {
        &self.topo.name
    }

    fn emit(&mut self, event: JobEvent) {
        self.ledger.emit(event);
    }

    fn note(&self, kind: MasterNoteKind) {
        self.root.do_send(MasterNote {
            incarnation: self.incarnation,
            kind,
        });
    }

    /// Ends the job: fences off checkpoint writes, stops every actor, hands `result` to the
    /// root (which reports it once every write the job started has ended and every task actor
    /// is gone: the fence's invariant) and stops.
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
        self.coordinator_abort = None;
        match &result {
            Ok(end) => {
                self.emit(JobEvent::JobFinished { end: *end });
                tracing::info!(job = %self.job(), end = ?end, restarts = self.sup.region_restarts(), job_restarts = self.sup.job_restarts(), "job finished");
            }
            Err(e) => {
                self.emit(JobEvent::JobFailed {
                    error: e.to_string(),
                });
                tracing::error!(job = %self.job(), error = %e, "job failed");
            }
        }
        self.note(MasterNoteKind::Ended(result));
        ctx.stop();
    }

    fn live(&self, task: usize) -> bool {
        self.sup.is_running(self.topo.regions[task]) && self.tasks[task].addr.is_some()
    }

    fn current(&self, task: usize, incarnation: u32) -> bool {
        task < self.tasks.len() && self.incarnation(task) == incarnation
    }

    fn incarnation(&self, task: usize) -> u32 {
        self.sup.incarnation(self.topo.regions[task])
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
            ctx.address().recipient(),
            topo.tasks.iter().map(|t| t.state_id.clone()).collect(),
            topo.graph_records(),
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
        self.coordinator_abort = Some(AbortOnDrop(join.abort_handle()));
        let me = ctx.address();
        actix::spawn(async move {
            let _ = join.await;
            me.do_send(CoordinatorExited { incarnation });
        });
        if self.ledger.savepoint_wanted() {
            addr.do_send(ToCoordinator::RequestSavepoint);
        }
        if self.final_requested {
            addr.do_send(ToCoordinator::RequestFinal {
                end_input: !self.stop_requested,
            });
        }
        // No checkpoint before every task of the job is registered (a trigger sent then would
        // reach no source, and the checkpoint would wait for its timeout), nor while a region
        // is down.
        if !self.sup.all_running() {
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
        let incarnations: HashMap<usize, u32> =
            tasks.iter().map(|t| (*t, self.incarnation(*t))).collect();
        let pending = match self.topo.spawn(
            &tasks,
            restore,
            restored_from,
            CheckpointId(next),
            &incarnations,
            &ctx.address().recipient(),
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
                    Ok(spawned) => act.register(ctx, spawned, region, restored_from, incarnations),
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
        incarnations: HashMap<usize, u32>,
    ) {
        // Tasks created for an incarnation that has since been replaced (a full restart of the
        // job while this region was restoring) must not run: the newer restore creates them.
        let stale = spawned
            .iter()
            .any(|(t, _)| incarnations.get(t) != Some(&self.incarnation(*t)));
        let me = ctx.address();
        let mut ids = Vec::with_capacity(spawned.len());
        for (task, (addr, join)) in spawned {
            if self.ending || stale {
                addr.do_send(Shutdown);
                join.abort();
                continue;
            }
            let incarnation = self.incarnation(task);
            self.tasks[task].addr = Some(addr);
            self.tasks[task].abort = Some(join.abort_handle());
            ids.push(self.topo.tasks[task].id.clone());
            watch_task(me.clone(), task, incarnation, join);
        }
        if self.ending || stale {
            return;
        }
        match region {
            Some(r) => {
                let deferred = self.sup.restored(r);
                if let Some(span) = self.restore_spans.remove(&r) {
                    span.in_scope(|| tracing::info!(checkpoint = ?restored_from, tasks = ids.len(), "region restored and running"));
                }
                self.metrics.restored(ids.clone(), restored_from);
                self.emit(JobEvent::Restored {
                    tasks: ids,
                    checkpoint: restored_from,
                });
                if self.sup.all_running() {
                    self.to_coordinator(ToCoordinator::Hold(false));
                }
                if let Some((task, error)) = deferred {
                    let incarnation = self.incarnation(task);
                    self.on_failure(ctx, task, incarnation, error);
                } else if let Some(done) = restored_from.filter(|c| Some(*c) == self.final_done) {
                    self.finish_after_final(ctx, done);
                }
            }
            None => {
                let early = self.sup.started();
                self.emit(JobEvent::Started { restored_from });
                self.note(MasterNoteKind::Up);
                // Failures reported while the job was starting: act on them now that every
                // actor is known (the coordinator stays held meanwhile).
                if early.is_empty() {
                    if self.sup.all_running() {
                        self.to_coordinator(ToCoordinator::Hold(false));
                    }
                } else {
                    for (task, error) in early {
                        let incarnation = self.incarnation(task);
                        self.on_failure(ctx, task, incarnation, error);
                    }
                }
            }
        }
    }

    /// A task of incarnation `incarnation` failed with `error`: asks the supervision core and
    /// carries out its decision.
    fn on_failure(&mut self, ctx: &mut Context<Self>, task: usize, incarnation: u32, error: Error) {
        if self.ending {
            return;
        }
        let region = self.topo.regions[task];
        let class = error.class();
        // A failure before its region's actors are all known (in open, say) is kept by the core
        // and handed back by `register`; none of them could be aborted yet.
        let decision =
            self.sup
                .on_failure(region, incarnation, class, (task, error.clone()), now());
        if matches!(decision, Decision::Stale | Decision::Deferred) {
            return;
        }
        let id = self.topo.tasks[task].id.clone();
        tracing::warn!(job = %self.job(), task = %id, class = ?class, error = %error, "task failure reported");
        self.metrics.failed(Some(&id), class, error.to_string());
        self.emit(JobEvent::TaskFailed {
            task: id.clone(),
            error: error.to_string(),
        });
        match decision {
            Decision::Stale | Decision::Deferred => {}
            Decision::FailFatal => {
                tracing::error!(job = %self.job(), task = %id, error = %error, "fatal error: no restart can fix it");
                self.finish(ctx, Err(error.in_task(&id)));
            }
            Decision::GiveUp { reason } => {
                tracing::error!(job = %self.job(), task = %id, reason = %reason, "restart strategies gave up");
                self.finish(
                    ctx,
                    Err(Error::RestartsExhausted {
                        reason,
                        source: Box::new(error.in_task(&id)),
                    }),
                );
            }
            Decision::RestartRegion { delay, attempt, .. } => {
                self.ledger.count_restart(false);
                self.metrics.restarting(false);
                let tasks = self.topo.region_of(task);
                tracing::warn!(job = %self.job(), task = %id, error = %error, attempt, delay = ?delay, region_tasks = tasks.len(), "restarting failover region");
                self.take_down(ctx, &tasks, &format!("task {id} failed"), attempt, delay);
            }
            Decision::RestartJob {
                reason,
                delay,
                attempt,
                ..
            } => {
                tracing::warn!(job = %self.job(), task = %id, error = %error, reason = %reason, attempt, delay = ?delay, "a region spent its restarts: restarting the whole job");
                self.ledger.count_restart(true);
                self.metrics.restarting(true);
                self.emit(JobEvent::Escalated {
                    tasks: self.region_ids(&self.topo.region_of(task)),
                    reason,
                });
                let all: Vec<usize> = (0..self.topo.tasks.len()).collect();
                self.take_down(ctx, &all, &format!("task {id} failed"), attempt, delay);
            }
        }
    }

    fn region_ids(&self, tasks: &[usize]) -> Vec<crate::checkpoint::TaskId> {
        tasks
            .iter()
            .map(|t| self.topo.tasks[*t].id.clone())
            .collect()
    }

    /// Stops `tasks` (whole regions, already moved to their next incarnation by the core) and
    /// restores each of their regions after `delay`.
    fn take_down(
        &mut self,
        ctx: &mut Context<Self>,
        tasks: &[usize],
        reason: &str,
        attempt: u32,
        delay: Duration,
    ) {
        for &t in tasks {
            if let Some(a) = self.tasks[t].abort.take() {
                a.abort();
            }
            self.tasks[t].addr = None;
            self.sources_at_end.remove(&t);
        }
        self.to_coordinator(ToCoordinator::AbortInFlight {
            reason: reason.to_string(),
        });
        self.to_coordinator(ToCoordinator::Hold(true));
        if self.final_requested && !self.stop_requested {
            // Restarted sources must read again before the input can end.
            self.final_requested = false;
            self.to_coordinator(ToCoordinator::CancelFinal);
        } else {
            // A final checkpoint may have completed without every commit: allow the next final
            // checkpoint.
            self.to_coordinator(ToCoordinator::Rearm);
        }
        self.emit(JobEvent::Restarting {
            tasks: self.region_ids(tasks),
            attempt,
            delay,
        });
        let mut regions: Vec<usize> = tasks.iter().map(|t| self.topo.regions[*t]).collect();
        regions.sort_unstable();
        regions.dedup();
        for region in regions {
            self.failure_at.insert(region, now());
            let members: Vec<usize> = tasks
                .iter()
                .copied()
                .filter(|t| self.topo.regions[*t] == region)
                .collect();
            let incarnation = self.sup.incarnation(region);
            ctx.run_later(delay, move |act, ctx| {
                act.restore_region(ctx, region, members, incarnation)
            });
        }
    }

    /// Restores `region` (its `tasks`) for its incarnation `incarnation`; does nothing once that
    /// incarnation has been replaced (a full restart of the job scheduled a newer restore).
    fn restore_region(
        &mut self,
        ctx: &mut Context<Self>,
        region: usize,
        tasks: Vec<usize>,
        incarnation: u32,
    ) {
        if self.ending || self.sup.incarnation(region) != incarnation {
            return;
        }
        self.sup.restoring(region);
        let span = tracing::info_span!(
            "restore",
            job = %self.job(),
            region,
            tasks = tasks.len(),
            checkpoint = tracing::field::Empty
        );
        self.restore_spans.insert(region, span);
        let plan = self.topo.restore_plan(&tasks);
        ctx.spawn(plan.into_actor(self).map(move |planned, act, ctx| {
            if act.sup.incarnation(region) != incarnation {
                return; // replaced while the checkpoint was read
            }
            match planned {
                Ok((restored_from, restore)) => {
                    if let Some(span) = act.restore_spans.get(&region) {
                        span.record("checkpoint", tracing::field::debug(restored_from));
                        span.in_scope(|| tracing::info!(checkpoint = ?restored_from, "restoring the region from its checkpoint"));
                    }
                    act.spawn_tasks(ctx, tasks, restore, restored_from, Some(region))
                }
                Err(e) => act.finish(ctx, Err(e)),
            }
        }));
    }

    /// The final checkpoint `checkpoint` is complete: once every task is running, asks each to
    /// commit it and ends the job when all have. Called when it completes, and again when a
    /// region that failed meanwhile has been restored from it (its sinks committed it in their
    /// recovery), so that a failure after the final manifest was written does not need another
    /// final checkpoint, which under steady failures might never complete in time.
    fn finish_after_final(&mut self, ctx: &mut Context<Self>, checkpoint: CheckpointId) {
        if self.ending || !self.sup.all_running() || self.final_done != Some(checkpoint) {
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
            if act.sup.all_running() && replies.iter().all(|r| matches!(r, Ok(true))) {
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

    /// Checkpoint `checkpoint` was triggered: the barrier goes to every source, or, when a
    /// source is not running, the checkpoint is declined at once.
    fn on_triggered(&mut self, checkpoint: CheckpointId, is_final: bool, savepoint: bool) {
        self.last_triggered = Some(checkpoint);
        let span = tracing::info_span!("checkpoint", job = %self.job(), id = checkpoint.0, is_final, savepoint);
        span.in_scope(|| tracing::debug!("checkpoint triggered"));
        // Checkpoints triggered before and never answered (a coordinator restarted) end here.
        self.checkpoint_spans.retain(|id, _| *id > checkpoint);
        self.checkpoint_spans.insert(checkpoint, span);
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
        if let Some(t) =
            (0..self.topo.tasks.len()).find(|&t| self.topo.tasks[t].is_source && !self.live(t))
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
                        savepoint,
                    });
                }
            }
        }
    }

    /// Carries out chaos kill `number` (chosen by the root's monkey): the target is drawn
    /// with `pick` among the running tasks (of the monkey's vertices, if it names any).
    fn strike(&mut self, msg: Strike) {
        let Strike {
            kill,
            number,
            pick,
            vertices,
        } = msg;
        if !self.sup.job_started() || self.ending {
            return;
        }
        let hosts_only = kill == Kill::ApplicationActor;
        let candidates: Vec<usize> = (0..self.tasks.len())
            .filter(|t| self.live(*t))
            .filter(|t| {
                !hosts_only || self.topo.vertices[self.topo.tasks[*t].vertex].role == Role::Sink
            })
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
            Kill::ApplicationActor => {
                let Some(t) = target else { return };
                if let Some(a) = &self.tasks[t].addr {
                    a.do_send(KillHosted);
                }
                (Some(t), "application actor stopped".to_string())
            }
            Kill::Coordinator => {
                if let Some(a) = &self.coordinator_abort {
                    a.0.abort();
                }
                (None, "coordinator stopped from outside".to_string())
            }
            Kill::At(moment) => {
                self.topo.chaos.arm(moment, number);
                (None, format!("armed at {moment:?}"))
            }
            // Carried out by the root, which holds the master's handle.
            Kill::JobSupervisor => return,
        };
        let task_id = task.map(|t| self.topo.tasks[t].id.clone());
        tracing::warn!(job = %self.job(), kill = number, target = ?task_id, how = %how, "chaos kill");
        self.emit(JobEvent::ChaosKill {
            kill: number,
            task: task_id,
            how,
        });
    }
}

/// Reports to `master` how the actor of `task` (incarnation `incarnation`) ended, once its
/// future `join` completes: normally, by a panic, or aborted from outside.
fn watch_task(
    master: Addr<JobMaster>,
    task: usize,
    incarnation: u32,
    join: tokio::task::JoinHandle<()>,
) {
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
        master.do_send(TaskExited {
            task,
            incarnation,
            outcome,
        });
    });
}

impl Actor for JobMaster {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Never panics. Every task of this master stops (also when the master's future is
        // dropped instead: the channel closes).
        let _ = self.cancel.send(true);
    }
}
