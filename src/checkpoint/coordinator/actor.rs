//! The checkpoint coordinator actor, next to the pure [`CheckpointCoordinator`] it drives on a
//! timer: writes manifests, and reports to the job master, which supervises it under its own
//! budget (`JobConfig::coordinator_restart`): if it dies (killed, or stopped by a chaos kill
//! during a manifest write), the master starts a new one that resumes after the latest
//! complete checkpoint. It talks to the master only through the messages of `protocol.rs`, so
//! it imports nothing of the runtime.
//!
//! Messages: the master forwards task acks and declines and passes on requests (checkpoint now,
//! final checkpoint, abort the one in flight); the coordinator tells the master when it
//! triggered, completed or aborted a checkpoint. Only the coordinator changes the
//! coordinator core's state; only the master talks to tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use crate::chaos::{ChaosHooks, Moment};
use crate::checkpoint::fence::WriteFence;
use crate::checkpoint::protocol::{now, AckInfo, FromCoordinator, ToCoordinator};
use crate::checkpoint::CheckpointStats;
use crate::checkpoint::{
    AckOutcome, CheckpointCoordinator, CheckpointId, CheckpointKind, CheckpointStorage,
    CheckpointTiming, FailOutcome, Manifest, SourceOffset, TaskId, TaskStateEntry, VertexRecord,
};
use crate::error::{Error, Result};

pub(crate) struct CoordinatorActor {
    pub(crate) job: String,
    pub(crate) core: CheckpointCoordinator<AckInfo>,
    pub(crate) storage: Arc<dyn CheckpointStorage>,
    pub(crate) master: Recipient<FromCoordinator>,
    /// Every task as its checkpoint files name it (by its vertex's uid).
    pub(crate) tasks: Vec<TaskId>,
    pub(crate) parallelism: BTreeMap<String, u32>,
    /// The job's graph, recorded in every manifest (with the states of the tasks' acks).
    pub(crate) graph: Vec<VertexRecord>,
    pub(crate) max_parallelism: u32,
    pub(crate) tick: Duration,
    pub(crate) timeout: Duration,
    pub(crate) inline_io: bool,
    pub(crate) chaos: Arc<ChaosHooks>,
    pub(crate) manifest_gate: Arc<tokio::sync::Mutex<()>>,
    /// The job's write fence: a manifest write or a removal holds a permit while it runs.
    pub(crate) fence: Arc<WriteFence>,
    /// The checkpoint whose manifest is being written: it can no longer be aborted, only
    /// completed or failed by the write.
    pub(crate) writing: Option<CheckpointId>,
    pub(crate) held: bool,
    /// The final checkpoint asked for ends the input (its manifest says so).
    pub(crate) final_ends_input: bool,
}

impl CoordinatorActor {
    /// A coordinator for `tasks` tasks whose first checkpoint is `first`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        job: String,
        timing: CheckpointTiming,
        first: CheckpointId,
        storage: Arc<dyn CheckpointStorage>,
        master: Recipient<FromCoordinator>,
        tasks: Vec<TaskId>,
        graph: Vec<VertexRecord>,
        max_parallelism: u32,
        inline_io: bool,
        chaos: Arc<ChaosHooks>,
        manifest_gate: Arc<tokio::sync::Mutex<()>>,
        fence: Arc<WriteFence>,
        (tolerable_failures, failure_backoff): (u32, Duration),
    ) -> Self {
        CoordinatorActor {
            job,
            core: CheckpointCoordinator::new(timing, tasks.len(), first)
                .with_failure_policy(tolerable_failures, failure_backoff),
            storage,
            master,
            tasks,
            parallelism: graph
                .iter()
                .map(|v| (v.uid.clone(), v.parallelism))
                .collect(),
            graph,
            max_parallelism,
            tick: Duration::from_millis(5),
            timeout: timing.timeout,
            inline_io,
            chaos,
            manifest_gate,
            fence,
            writing: None,
            held: false,
            final_ends_input: false,
        }
    }

    /// Aborts checkpoint `id` if it is in flight. `failure` is `Some` (with the error behind
    /// it, if any) when the checkpoint failed for a reason of its own, which counts against the
    /// tolerance; `None` for an abort caused by a task failure.
    fn abort(&mut self, id: CheckpointId, reason: String, failure: Option<Option<Error>>) {
        if self.writing == Some(id) {
            tracing::debug!(job = %self.job, checkpoint = %id, reason = %reason, "not aborting: its manifest is being written");
            return;
        }
        let t = now();
        let give_up = match failure {
            None => {
                if !self.core.abort(id, t) {
                    return;
                }
                None
            }
            Some(error) => match self.core.fail(id, t) {
                FailOutcome::Stale => return,
                FailOutcome::Retry { failures, after } => {
                    tracing::warn!(job = %self.job, checkpoint = %id, failures, backoff = ?after, "checkpoint failed; retrying after a back-off");
                    None
                }
                FailOutcome::GiveUp { failures } => Some(Error::CheckpointsFailing {
                    failures,
                    tolerable: failures - 1,
                    checkpoint: id,
                    reason: reason.clone(),
                    source: error.map(Box::new),
                }),
            },
        };
        self.master.do_send(FromCoordinator::Aborted {
            checkpoint: id,
            reason,
        });
        if let Some(error) = give_up {
            self.master.do_send(FromCoordinator::Failing { error });
        }
        let Some(permit) = self.fence.begin() else {
            return;
        };
        let storage = Arc::clone(&self.storage);
        if self.inline_io {
            let removed = storage.abort(id);
            drop(permit);
            if let Err(e) = removed {
                tracing::warn!(job = %self.job, checkpoint = %id, error = %e, "could not remove an aborted checkpoint's files");
            }
            return;
        }
        let job = self.job.clone();
        actix::spawn(async move {
            let removed = tokio::task::spawn_blocking(move || {
                let removed = storage.abort(id);
                drop(permit);
                removed
            })
            .await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(job = %job, checkpoint = %id, error = %e, "could not remove an aborted checkpoint's files");
            }
        });
    }

    fn on_tick(&mut self) {
        let t = now();
        if let Some(id) = self.core.timed_out(t) {
            let timeout = self.timeout;
            self.abort(
                id,
                format!("not complete after its timeout of {timeout:?}"),
                Some(None),
            );
        }
        if self.held {
            return;
        }
        if let Some(trigger) = self.core.poll_trigger(t) {
            self.master.do_send(FromCoordinator::Triggered {
                checkpoint: trigger.checkpoint,
                is_final: trigger.is_final,
                savepoint: trigger.savepoint,
            });
        }
    }

    /// The manifest of `checkpoint` from every task's ack, and its statistics so far.
    fn manifest_of(
        &self,
        checkpoint: CheckpointId,
        (is_final, savepoint): (bool, bool),
        acks: BTreeMap<usize, AckInfo>,
        triggered_at: std::time::Instant,
    ) -> (Manifest, CheckpointStats) {
        let mut manifest = Manifest::new(&self.job, checkpoint, self.max_parallelism);
        manifest.parallelism = self.parallelism.clone();
        if savepoint {
            manifest.kind = CheckpointKind::Savepoint;
        }
        manifest.input_ended = is_final && self.final_ends_input;
        let mut states: BTreeMap<&str, std::collections::BTreeSet<_>> = BTreeMap::new();
        let elapsed = now().saturating_duration_since(triggered_at);
        let mut stats = CheckpointStats {
            id: checkpoint,
            triggered_at: SystemTime::now() - elapsed,
            duration: Duration::ZERO,
            bytes: 0,
            max_alignment: Duration::ZERO,
            max_capture: Duration::ZERO,
            max_task_encoding: Duration::ZERO,
            max_task_encoding_pause: Duration::ZERO,
            ack_latency: Vec::with_capacity(acks.len()),
            is_final,
        };
        for (task, ack) in acks {
            let id = self.tasks[task].clone();
            states
                .entry(self.tasks[task].vertex.as_str())
                .or_default()
                .extend(ack.states);
            stats.bytes += ack.state.size;
            stats.max_alignment = stats.max_alignment.max(ack.alignment);
            stats.max_capture = stats.max_capture.max(ack.capture);
            stats.max_task_encoding = stats.max_task_encoding.max(ack.task_encoding.total);
            stats.max_task_encoding_pause =
                stats.max_task_encoding_pause.max(ack.task_encoding.longest);
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
        manifest.vertices = self
            .graph
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.states = states
                    .remove(v.uid.as_str())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                v
            })
            .collect();
        (manifest, stats)
    }

    fn on_all_acked(
        &mut self,
        ctx: &mut Context<Self>,
        checkpoint: CheckpointId,
        kind: (bool, bool),
        acks: BTreeMap<usize, AckInfo>,
        triggered_at: std::time::Instant,
    ) {
        let (manifest, mut stats) = self.manifest_of(checkpoint, kind, acks, triggered_at);
        let Some(permit) = self.fence.begin() else {
            // The job is ending: no manifest is written after that.
            return;
        };
        let storage = Arc::clone(&self.storage);
        let killed = self.chaos.fire(Moment::CoordinatorManifestWrite);
        self.writing = Some(checkpoint);
        if self.inline_io && killed.is_none() {
            let result = storage.commit(&manifest);
            drop(permit);
            stats.duration = now().saturating_duration_since(triggered_at);
            self.on_written(checkpoint, kind, result, stats);
            return;
        }
        // The gate is held by the write itself, so it stays held until the manifest is on disk
        // even if this actor dies meanwhile.
        let gate = Arc::clone(&self.manifest_gate);
        let write = async move {
            let guard = gate.lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let written = storage.commit(&manifest);
                drop(guard);
                drop(permit);
                written
            })
            .await
        };
        if let Some(kill) = killed {
            // The manifest write goes on without its coordinator, as after a crash mid-write.
            actix::spawn(write);
            tracing::warn!(job = %self.job, checkpoint = %checkpoint, kill, "chaos: coordinator stopped during a manifest write");
            ctx.stop();
            return;
        }
        ctx.spawn(write.into_actor(self).map(move |written, act, _ctx| {
            let result = match written {
                Ok(r) => r,
                Err(join) => Err(Error::Internal(format!("manifest writer failed: {join}"))),
            };
            stats.duration = now().saturating_duration_since(triggered_at);
            act.on_written(checkpoint, kind, result, stats);
        }));
    }

    fn on_written(
        &mut self,
        checkpoint: CheckpointId,
        (is_final, savepoint): (bool, bool),
        result: Result<()>,
        stats: CheckpointStats,
    ) {
        self.writing = None;
        match result {
            Ok(()) => {
                self.core.complete(checkpoint, now());
                self.master.do_send(FromCoordinator::Completed {
                    checkpoint,
                    is_final,
                    savepoint: savepoint.then(|| self.storage.location(checkpoint)),
                    stats,
                });
            }
            Err(e) => self.abort(
                checkpoint,
                format!("manifest write failed: {e}"),
                Some(Some(e)),
            ),
        }
    }
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.tick, |act, _| act.on_tick());
    }
}

impl Handler<ToCoordinator> for CoordinatorActor {
    type Result = ();

    fn handle(&mut self, msg: ToCoordinator, ctx: &mut Self::Context) {
        match msg {
            ToCoordinator::Ack(ack) => {
                let (id, task) = (ack.checkpoint, ack.task);
                match self.core.on_ack(id, task, ack) {
                    AckOutcome::Stale => {
                        tracing::debug!(job = %self.job, checkpoint = %id, task, "late ack ignored");
                    }
                    AckOutcome::Pending => {}
                    AckOutcome::AllAcked {
                        checkpoint,
                        is_final,
                        savepoint,
                        acks,
                        triggered_at,
                    } => self.on_all_acked(
                        ctx,
                        checkpoint,
                        (is_final, savepoint),
                        acks,
                        triggered_at,
                    ),
                }
            }
            ToCoordinator::Decline {
                checkpoint,
                reason,
                error,
            } => {
                let failure = error.map(Some);
                self.abort(checkpoint, reason, failure)
            }
            ToCoordinator::RequestNow => self.core.request_now(),
            ToCoordinator::RequestFinal { end_input } => {
                self.final_ends_input = end_input;
                self.core.request_final()
            }
            ToCoordinator::RequestSavepoint => self.core.request_savepoint(),
            ToCoordinator::CancelFinal => self.core.cancel_final(),
            ToCoordinator::Rearm => self.core.rearm(),
            ToCoordinator::Hold(h) => self.held = h,
            ToCoordinator::AbortInFlight { reason } => {
                if let Some(id) = self.core.in_flight() {
                    self.abort(id, reason, None);
                }
            }
        }
    }
}
