//! The job master's message handlers: each one checks the message is current (the job is not
//! ending, the sender's incarnation is the live one) and hands it to the master's methods in
//! `mod.rs`, which carry out the supervision core's decisions.

use actix::prelude::*;

use super::{CoordinatorExited, JobMaster, Launch, TaskExited};
use crate::checkpoint::CheckpointId;
use crate::error::Error;
use crate::runtime::events::{JobEnd, JobEvent};
use crate::runtime::messages::{
    now, Command, Complete, EventKind, FromCoordinator, Strike, TaskEvent, ToCoordinator,
};
use crate::runtime::task::TaskActor;
use crate::supervision::RestartDecision;

impl Handler<Launch> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Launch, ctx: &mut Self::Context) {
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
        self.on_failure(
            ctx,
            msg.task,
            msg.incarnation,
            Error::TaskStopped { reason },
        );
    }
}

impl Handler<CoordinatorExited> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: CoordinatorExited, ctx: &mut Self::Context) {
        if self.ending || msg.incarnation != self.coordinator_incarnation {
            return;
        }
        self.coordinator = None;
        let delay = match self.coordinator_tracker.on_failure(now()) {
            RestartDecision::Restart { delay, attempt } => {
                tracing::warn!(job = %self.job(), attempt, delay = ?delay, "checkpoint coordinator failed; restarting it");
                delay
            }
            RestartDecision::GiveUp { reason } => {
                tracing::error!(job = %self.job(), reason = %reason, "the checkpoint coordinator's restart strategy gave up");
                let error = Error::RestartsExhausted {
                    reason: format!("checkpoint coordinator: {reason}"),
                    source: Box::new(Error::ActorGone {
                        actor: "CoordinatorActor",
                        reason: "stopped (a panic, or stopped from outside)".into(),
                    }),
                };
                return self.finish(ctx, Err(error));
            }
        };
        ctx.run_later(delay, |act, ctx| act.restart_coordinator(ctx));
    }
}

impl JobMaster {
    /// Starts a new checkpoint coordinator after the last one died.
    fn restart_coordinator(&mut self, ctx: &mut Context<Self>) {
        if self.ending {
            return;
        }
        // The new coordinator's ids must be above every id the storage holds (complete or
        // not), so that none is reused; no checkpoint needs to be read for that.
        let read = self.topo.max_checkpoint_id();
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
            EventKind::Ack(ack) => {
                if let Some(spec) = self.topo.tasks.get(ack.task) {
                    let counters = self.metrics.task(&spec.id);
                    counters.set_state(None, Some(ack.state.size));
                }
                self.to_coordinator(ToCoordinator::Ack(ack));
            }
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
            EventKind::Failed { error } => self.on_failure(ctx, task, msg.incarnation, error),
            EventKind::SourceAtEnd => {
                self.sources_at_end.insert(task);
                let sources = self.topo.tasks.iter().filter(|t| t.is_source).count();
                if self.sources_at_end.len() == sources && !self.final_requested {
                    tracing::info!(job = %self.job(), "every source reached the end of its input; taking the final checkpoint");
                    self.final_requested = true;
                    self.to_coordinator(ToCoordinator::RequestFinal {
                        end_input: !self.stop_requested,
                    });
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
                    self.metrics.recovered(took);
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
                savepoint,
            } => self.on_triggered(checkpoint, is_final, savepoint),
            FromCoordinator::Failing { error } => {
                tracing::error!(job = %self.job(), error = %error, "too many checkpoint failures in a row");
                self.finish(ctx, Err(error));
            }
            FromCoordinator::Aborted { checkpoint, reason } => {
                self.metrics.checkpoint_aborted(checkpoint, &reason);
                let span = self
                    .checkpoint_spans
                    .remove(&checkpoint)
                    .unwrap_or_else(tracing::Span::none);
                span.in_scope(|| tracing::warn!(job = %self.job(), checkpoint = %checkpoint, reason = %reason, "checkpoint aborted"));
                self.emit(JobEvent::CheckpointAborted { checkpoint, reason });
            }
            FromCoordinator::Completed {
                checkpoint,
                is_final,
                savepoint,
                stats,
            } => {
                let span = self
                    .checkpoint_spans
                    .remove(&checkpoint)
                    .unwrap_or_else(tracing::Span::none);
                span.in_scope(|| {
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
                    )
                });
                self.metrics.checkpoint_completed(stats);
                self.emit(JobEvent::CheckpointCompleted { checkpoint });
                // Restores of this run now start from its own checkpoints.
                self.topo.checkpoint_completed();
                if let Some(location) = savepoint {
                    tracing::info!(job = %self.job(), checkpoint = %checkpoint, location = %location, "savepoint completed");
                    self.emit(JobEvent::SavepointCompleted {
                        checkpoint,
                        location: location.clone(),
                    });
                    self.ledger.answer_savepoints(|| {
                        Ok(crate::runtime::events::Savepoint {
                            id: checkpoint,
                            location: location.clone(),
                        })
                    });
                }
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

impl Handler<Strike> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Strike, _ctx: &mut Self::Context) {
        self.strike(msg);
    }
}

impl JobMaster {
    /// A graceful stop: the final checkpoint, without end of input.
    fn request_stop(&mut self) {
        if self.ending || self.stop_requested {
            return;
        }
        tracing::info!(job = %self.job(), "graceful stop requested: taking the final checkpoint");
        self.emit(JobEvent::StopRequested);
        self.stop_requested = true;
        self.final_requested = true;
        self.to_coordinator(ToCoordinator::RequestFinal { end_input: false });
    }
}

impl Handler<Command> for JobMaster {
    type Result = ();

    fn handle(&mut self, msg: Command, ctx: &mut Self::Context) {
        match msg {
            Command::TriggerCheckpoint => self.to_coordinator(ToCoordinator::RequestNow),
            Command::Stop => self.request_stop(),
            Command::Savepoint { stop, .. } => {
                if self.ending {
                    return;
                }
                tracing::info!(job = %self.job(), stop, "savepoint requested");
                // First the savepoint request, so that a stop's final checkpoint is it.
                self.to_coordinator(ToCoordinator::RequestSavepoint);
                if stop {
                    self.request_stop();
                }
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
