//! The job root: the top of a job's supervisor tree, the actor a [`JobHandle`] talks to.
//!
//! The root owns what must outlive the job's supervisor (the job master): the result the
//! handles wait for, the arbiters the tasks run on, the chaos monkey, and the supervisor's own
//! restart budget ([`JobConfig::supervisor_restart`](super::JobConfig)). It starts incarnation
//! 1 of the master, forwards the handle's commands to the current incarnation, and reports the
//! end the master hands it once every write of the job has ended.
//!
//! When the master dies without having ended the job (a panic in it, or a chaos kill), its
//! actors end with it; the root waits until every write and task actor of the dead
//! incarnation is gone (the job's write fence drains), reads the latest complete checkpoint,
//! and starts a new incarnation that restores the whole job from it. **Invariant:** no write
//! started under a dead incarnation lands after its successor read the checkpoint it restores.
//!
//! [`JobHandle`]: super::JobHandle

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::events::{JobEnd, JobEvent};
use super::handle::JobReport;
use super::ledger::Ledger;
use super::logic::RestoreState;
use super::master::{JobMaster, Launch};
use super::messages::{now, Command, MasterNote, MasterNoteKind, Strike};
use super::metrics::JobMetrics;
use super::topology::Topology;
use crate::chaos::{ChaosMonkey, Kill, MonkeyState};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::supervision::{RestartDecision, RestartTracker};

/// The result a job's handles wait for.
pub(crate) type JobResult = watch::Receiver<Option<Result<JobReport>>>;

/// How the current master incarnation is reached.
struct MasterLink {
    commands: Recipient<Command>,
    strikes: Recipient<Strike>,
    abort: AbortHandle,
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct MasterExited {
    incarnation: u32,
    reason: String,
}

/// The root of one job (see the module documentation).
pub(crate) struct JobRoot {
    topo: Arc<Topology>,
    ledger: Arc<Ledger>,
    metrics: Arc<JobMetrics>,
    arbiters: Vec<Arbiter>,
    done: watch::Sender<Option<Result<JobReport>>>,
    master: Option<MasterLink>,
    incarnation: u32,
    /// The current master has started every task.
    up: bool,
    tracker: RestartTracker,
    seed: u64,
    monkey: Option<MonkeyState>,
    monkey_due: Option<Instant>,
    restored_from: Option<CheckpointId>,
    started: Instant,
    stop_requested: bool,
    cancel_requested: bool,
    ending: bool,
}

impl JobRoot {
    /// Starts the root of `topo` and, under it, the job's first master, which starts the tasks
    /// with `restore` (from checkpoint `restored_from`) and numbers checkpoints from `first`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        topo: Arc<Topology>,
        events: Option<Recipient<JobEvent>>,
        chaos: Option<ChaosMonkey>,
        metrics: Arc<JobMetrics>,
        arbiters: Vec<Arbiter>,
        restored_from: Option<CheckpointId>,
        restore: HashMap<usize, RestoreState>,
        first: CheckpointId,
    ) -> (Recipient<Command>, JobResult) {
        let (done, done_rx) = watch::channel(None);
        let seed = chaos.as_ref().map(|c| c.seed).unwrap_or(0);
        let root = JobRoot {
            ledger: Arc::new(Ledger::new(
                topo.name.clone(),
                topo.config.event_window,
                events,
                Arc::clone(&metrics),
            )),
            tracker: RestartTracker::new(topo.config.supervisor_restart.clone(), seed),
            topo,
            metrics,
            arbiters,
            done,
            master: None,
            incarnation: 0,
            up: false,
            seed,
            monkey: chaos.map(MonkeyState::new),
            monkey_due: None,
            restored_from,
            started: Instant::now(),
            stop_requested: false,
            cancel_requested: false,
            ending: false,
        };
        let addr = root.start();
        addr.do_send(StartMaster {
            restore,
            restored_from,
            first,
        });
        (addr.recipient(), done_rx)
    }

    fn job(&self) -> &str {
        &self.topo.name
    }

    /// Starts the next master incarnation and launches the job's tasks under it.
    fn start_master(&mut self, ctx: &mut Context<Self>, launch: Launch) {
        self.incarnation += 1;
        let incarnation = self.incarnation;
        let master = JobMaster::create(
            Arc::clone(&self.topo),
            incarnation,
            ctx.address().recipient(),
            Arc::clone(&self.ledger),
            Arc::clone(&self.metrics),
            self.seed.wrapping_add(u64::from(incarnation)),
        );
        let mctx: Context<JobMaster> = Context::new();
        let addr = mctx.address();
        let join = actix::spawn(mctx.into_future(master));
        let me = ctx.address();
        let abort = join.abort_handle();
        actix::spawn(async move {
            let reason = match join.await {
                Ok(()) => "stopped without ending the job".to_string(),
                Err(e) if e.is_panic() => "panicked".to_string(),
                Err(_) => "was stopped from outside (its future was aborted)".to_string(),
            };
            me.do_send(MasterExited {
                incarnation,
                reason,
            });
        });
        addr.do_send(launch);
        if self.stop_requested {
            addr.do_send(Command::Stop);
        }
        self.master = Some(MasterLink {
            commands: addr.clone().recipient(),
            strikes: addr.recipient(),
            abort,
        });
    }

    /// The master died without ending the job: restart it under the supervisor strategy, or
    /// fail the job once the strategy gives up.
    fn on_master_died(&mut self, ctx: &mut Context<Self>, reason: String) {
        self.master = None;
        self.up = false;
        if self.cancel_requested {
            return self.conclude(ctx, Ok(JobEnd::Cancelled));
        }
        let died = Error::ActorGone {
            actor: "JobMaster",
            reason: reason.clone(),
        };
        match self.tracker.on_failure(now()) {
            RestartDecision::GiveUp { reason } => {
                tracing::error!(job = %self.job(), reason = %reason, "the job supervisor's restart strategy gave up");
                let error = Error::RestartsExhausted {
                    reason: format!("job supervisor: {reason}"),
                    source: Box::new(died),
                };
                self.ledger.emit(JobEvent::JobFailed {
                    error: error.to_string(),
                });
                self.conclude(ctx, Err(error));
            }
            RestartDecision::Restart { delay, attempt } => {
                tracing::warn!(job = %self.job(), reason = %reason, attempt, delay = ?delay, "the job supervisor died; restarting it");
                self.ledger.emit(JobEvent::SupervisorRestarting {
                    reason,
                    attempt,
                    delay,
                });
                ctx.run_later(delay, |act, ctx| act.restore_job(ctx));
            }
        }
    }

    /// Once every write and task actor of the dead master is gone, reads the latest complete
    /// checkpoint and starts a new master restoring the whole job from it.
    fn restore_job(&mut self, ctx: &mut Context<Self>) {
        if self.ending {
            return;
        }
        let topo = Arc::clone(&self.topo);
        let last_triggered = self.ledger.last_triggered();
        let plan = async move {
            topo.fence.drained().await;
            let all: Vec<usize> = (0..topo.tasks.len()).collect();
            let (restored_from, restore) = topo.restore_plan(&all).await?;
            let max_id = topo.max_checkpoint_id().await?;
            let above = max_id.max(restored_from).max(last_triggered);
            let first = CheckpointId(above.map(|c| c.0 + 1).unwrap_or(1));
            Ok::<_, Error>(Launch {
                restore,
                restored_from,
                first,
            })
        };
        ctx.spawn(plan.into_actor(self).map(|planned, act, ctx| {
            if act.ending {
                return;
            }
            match planned {
                Ok(launch) if act.cancel_requested => {
                    drop(launch);
                    act.conclude(ctx, Ok(JobEnd::Cancelled));
                }
                Ok(launch) => {
                    tracing::info!(job = %act.job(), checkpoint = ?launch.restored_from, "restarted job supervisor restores the job");
                    act.start_master(ctx, launch);
                }
                Err(e) => {
                    act.ledger.emit(JobEvent::JobFailed {
                        error: e.to_string(),
                    });
                    act.conclude(ctx, Err(e));
                }
            }
        }));
    }

    /// Ends the job with `result`: fences off its writes, stops its arbiters, and publishes
    /// the report once every write and task actor of the job is gone.
    fn conclude(&mut self, ctx: &mut Context<Self>, result: Result<JobEnd>) {
        if self.ending {
            return;
        }
        self.ending = true;
        self.topo.fence.close();
        if let Some(m) = self.master.take() {
            m.abort.abort();
        }
        if let Ok(end) = &result {
            if !self.ledger.finished() {
                self.ledger.emit(JobEvent::JobFinished { end: *end });
            }
        }
        for arbiter in self.arbiters.drain(..) {
            arbiter.stop();
        }
        let job = self.job().to_string();
        self.ledger.answer_savepoints(|| {
            Err(Error::JobEnded {
                job: job.clone(),
                what: "a savepoint request".into(),
            })
        });
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
                let report = result.map(|end| act.report(end));
                act.done.send_replace(Some(report));
                ctx.stop();
            }),
        );
    }

    fn report(&self, end: JobEnd) -> JobReport {
        let t = self.ledger.tally();
        JobReport {
            job: self.topo.name.clone(),
            end,
            checkpoints_completed: t.completed,
            last_checkpoint: t.last_completed,
            restored_from: self.restored_from,
            resumed_after_end: self
                .topo
                .resumed_after_end
                .load(std::sync::atomic::Ordering::Relaxed),
            restarts: t.region_restarts,
            job_restarts: t.job_restarts,
            supervisor_restarts: self.tracker.restarts(),
            kills: self.monkey.as_ref().map(|m| m.kills).unwrap_or(0),
            elapsed: self.started.elapsed(),
            metrics: self.metrics.snapshot(),
            events: t.events.to_vec(),
            events_total: t.events.total(),
        }
    }

    /// The chaos monkey's clock: once the job runs, carries out each kill when it is due.
    fn on_tick(&mut self) {
        if !self.up || self.ending {
            return;
        }
        let (Some(monkey), Some(master)) = (self.monkey.as_mut(), self.master.as_ref()) else {
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
        let pick = monkey.next_u64();
        self.monkey_due = Some(t + monkey.draw_interval());
        if kill == Kill::JobSupervisor {
            tracing::warn!(job = %self.topo.name, seed = monkey.config.seed, kill = number, "chaos kill: job supervisor stopped from outside");
            self.ledger.emit(JobEvent::ChaosKill {
                kill: number,
                task: None,
                how: "job supervisor stopped from outside".into(),
            });
            master.abort.abort();
            return;
        }
        tracing::debug!(job = %self.topo.name, seed = monkey.config.seed, kill = number, "chaos kill sent to the job supervisor");
        master.strikes.do_send(Strike {
            kill,
            number,
            pick,
            vertices: monkey.config.vertices.clone(),
        });
    }
}

/// Starts the first master (sent once by [`JobRoot::launch`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct StartMaster {
    restore: HashMap<usize, RestoreState>,
    restored_from: Option<CheckpointId>,
    first: CheckpointId,
}

impl Actor for JobRoot {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_millis(5), |act, _ctx| act.on_tick());
    }
}

impl Handler<StartMaster> for JobRoot {
    type Result = ();

    fn handle(&mut self, msg: StartMaster, ctx: &mut Self::Context) {
        let launch = Launch {
            restore: msg.restore,
            restored_from: msg.restored_from,
            first: msg.first,
        };
        self.start_master(ctx, launch);
    }
}

impl Handler<MasterNote> for JobRoot {
    type Result = ();

    fn handle(&mut self, msg: MasterNote, ctx: &mut Self::Context) {
        if self.ending || msg.incarnation != self.incarnation {
            return;
        }
        match msg.kind {
            MasterNoteKind::Up => self.up = true,
            MasterNoteKind::Ended(result) => {
                // The master stops itself; the link must not abort it first.
                self.master = None;
                self.conclude(ctx, result);
            }
        }
    }
}

impl Handler<MasterExited> for JobRoot {
    type Result = ();

    fn handle(&mut self, msg: MasterExited, ctx: &mut Self::Context) {
        if self.ending || msg.incarnation != self.incarnation {
            return;
        }
        self.on_master_died(ctx, msg.reason);
    }
}

impl Handler<Command> for JobRoot {
    type Result = ();

    fn handle(&mut self, msg: Command, ctx: &mut Self::Context) {
        if self.ending {
            // Dropping a savepoint's reply tells its caller the job has ended.
            return;
        }
        let msg = match msg {
            Command::Stop => {
                self.stop_requested = true;
                Command::Stop
            }
            Command::Cancel => {
                self.cancel_requested = true;
                Command::Cancel
            }
            Command::TriggerCheckpoint => Command::TriggerCheckpoint,
            Command::Savepoint { stop, reply } => {
                // Kept in the ledger: a master that starts later (after this one died) asks
                // for the savepoint again.
                if let Some(reply) = reply {
                    self.ledger.wait_for_savepoint(reply);
                }
                self.stop_requested |= stop;
                Command::Savepoint { stop, reply: None }
            }
        };
        match &self.master {
            Some(m) => m.commands.do_send(msg),
            // Between two incarnations: a stop reaches the next one; a cancel ends the job now.
            None if matches!(msg, Command::Cancel) => {
                self.ledger.emit(JobEvent::CancelRequested);
                self.conclude(ctx, Ok(JobEnd::Cancelled));
            }
            None => {}
        }
    }
}
