//! [`JobHandle`]: how the embedding application follows and controls a running job.

use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use tokio::sync::watch;

use super::actor::{ActorOperator, Ingress, InstanceOperator, InstanceRef, OperatorRef, Outside};
use super::events::{JobEnd, JobEvent};
use super::messages::Command;
use super::metrics::{JobGraph, JobMetrics, MetricsSnapshot};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// The job's name.
    pub job: String,
    /// Why it ended.
    pub end: JobEnd,
    /// Checkpoints completed during this run.
    pub checkpoints_completed: u64,
    /// The last checkpoint completed, if any.
    pub last_checkpoint: Option<CheckpointId>,
    /// The checkpoint the job resumed from when it started, if any.
    pub restored_from: Option<CheckpointId>,
    /// The job started from the final checkpoint of an earlier run whose input had ended (a
    /// bounded job started again on the same checkpoints): it committed what that run had left
    /// uncommitted, read nothing, and ended. To process the input again, start with
    /// [`StartFrom::Nothing`](crate::StartFrom::Nothing) and a fresh output.
    pub resumed_after_end: bool,
    /// Restarts of single failover regions.
    pub restarts: u32,
    /// Full restarts of the job, each after a region spent its own restarts.
    pub job_restarts: u32,
    /// Restarts of the job's supervisor (its master actor), each after it died; each restored
    /// the whole job from the latest complete checkpoint.
    pub supervisor_restarts: u32,
    /// Kills by the chaos monkey.
    pub kills: u32,
    /// How long the job ran.
    pub elapsed: Duration,
    /// The metrics at the end.
    pub metrics: MetricsSnapshot,
    /// The newest lifecycle events, in order: at most
    /// [`JobConfig::event_window`](crate::JobConfig::event_window) of them.
    pub events: Vec<JobEvent>,
    /// How many lifecycle events the run had (kept in `events` or not).
    pub events_total: u64,
}

/// Where a job is, as [`JobHandle::status`] tells it without waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// It runs (or is being restarted).
    Running,
    /// It ended without failing.
    Finished(JobEnd),
    /// It ended with an error (its message).
    Failed(String),
}

/// A running job. Cheap to clone: every clone follows and controls the same job, and any
/// number of them may [`wait`](Self::wait) at once. Dropping the handles does not stop the job.
///
/// The handle talks to the job's root, above its supervisor: it keeps working when the
/// supervisor dies and is restarted ([`JobEvent::SupervisorRestarting`]). A command sent
/// while no supervisor runs is kept for the next one (a stop), or carried out by the root (a
/// cancel); a checkpoint asked for then is not taken.
#[derive(Debug, Clone)]
pub struct JobHandle {
    pub(crate) root: Recipient<Command>,
    pub(crate) result: watch::Receiver<Option<Result<JobReport>>>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) outside: Arc<Outside>,
}

impl JobHandle {
    /// Waits for the job to end and returns how it ended: `Ok` with a report once a bounded
    /// job's final checkpoint is committed ([`JobEnd::InputEnded`]), once a
    /// [`stop`](Self::stop) completed ([`JobEnd::Stopped`]), or once a
    /// [`cancel`](Self::cancel) took effect ([`JobEnd::Cancelled`]); `Err` with the failure
    /// that ended the job otherwise.
    ///
    /// It returns only after every checkpoint write the job started (task state, manifests,
    /// removals) has ended and every task actor of the job has stopped: once it has returned,
    /// nothing the job wrote can appear in its checkpoint storage any more and no sink of it
    /// touches its output, so a new job may start on the same storage and output. An operator
    /// blocked in its own code (in `open`, say) delays the return until it comes back.
    ///
    /// Takes `&self`: wait with a timeout (`tokio::time::timeout(d, handle.wait())`) and still
    /// cancel or stop the job afterwards; call it again, or from clones, for the same answer.
    pub async fn wait(&self) -> Result<JobReport> {
        let mut rx = self.result.clone();
        let outcome = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        match outcome {
            Ok(Some(result)) => result,
            Ok(None) => Err(Error::Internal("a job result was empty".into())),
            Err(_) => Err(Error::ActorGone {
                actor: "JobRoot",
                reason: "the job's root stopped without a result (was its System stopped?)".into(),
            }),
        }
    }

    /// Whether the job has ended (its [`wait`](Self::wait) would return at once).
    pub fn is_finished(&self) -> bool {
        self.result.borrow().is_some()
    }

    /// Asks for a checkpoint now (after the one in flight, if any).
    pub fn trigger_checkpoint(&self) {
        self.root.do_send(Command::TriggerCheckpoint);
    }

    /// Asks the job to stop gracefully: the sources stop reading, a final checkpoint is taken
    /// and every sink commits it, then the job ends with [`JobEnd::Stopped`]. A stop is not an
    /// end of input: operators' end-of-input hooks do not run, and a job resumed from the
    /// final checkpoint carries on exactly where this one stopped (Flink's stop-with-savepoint
    /// without draining). Follow with [`wait`](Self::wait).
    pub fn stop(&self) {
        self.root.do_send(Command::Stop);
    }

    /// Takes a savepoint and returns it once it is complete: an aligned checkpoint (whatever
    /// [`JobConfig::mode`](crate::JobConfig::mode)) that retention never removes and that a job
    /// starts from with [`StartFrom::Savepoint`](crate::StartFrom::Savepoint) (its location;
    /// the directory may be copied anywhere first) or [`StartFrom::Checkpoint`](crate::StartFrom::Checkpoint)
    /// (its id). Its manifest records the job's graph. Taken after the checkpoint in flight,
    /// if any; one that is aborted (a task failed) is tried again until one completes. Fails
    /// with [`Error::JobEnded`] if the job ends first. Like every checkpoint, the sinks commit
    /// it.
    pub async fn savepoint(&self) -> Result<super::events::Savepoint> {
        self.ask_savepoint(false).await
    }

    /// [`stop`](Self::stop) with a savepoint as the final checkpoint: returns the savepoint
    /// once it is complete, then the job ends with [`JobEnd::Stopped`] (follow with
    /// [`wait`](Self::wait)). The way to upgrade a job: stop with a savepoint, change the
    /// code, start the new version with `StartFrom::Savepoint(location)`.
    pub async fn stop_with_savepoint(&self) -> Result<super::events::Savepoint> {
        self.ask_savepoint(true).await
    }

    async fn ask_savepoint(&self, stop: bool) -> Result<super::events::Savepoint> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.root.do_send(Command::Savepoint {
            stop,
            reply: Some(tx),
        });
        rx.await.unwrap_or_else(|_| {
            Err(Error::JobEnded {
                job: self.outside.job.clone(),
                what: "a savepoint request".into(),
            })
        })
    }

    /// Stops the job at once, without a final checkpoint: [`wait`](Self::wait) then returns a
    /// report with [`JobEnd::Cancelled`]. Output of epochs whose checkpoint had not completed
    /// stays uncommitted.
    pub fn cancel(&self) {
        self.root.do_send(Command::Cancel);
    }

    /// The job's metrics now. Per-second figures are computed between two calls at least a
    /// second apart (whichever callers make them), so they are 0 at the first call.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.outside.job
    }

    /// Whether the job runs, or how it ended, now.
    pub fn status(&self) -> JobStatus {
        match self.result.borrow().as_ref() {
            None => JobStatus::Running,
            Some(Ok(report)) => JobStatus::Finished(report.end),
            Some(Err(e)) => JobStatus::Failed(e.to_string()),
        }
    }

    /// The job's vertices (with their parallelism) and edges (with their partitioning).
    pub fn graph(&self) -> JobGraph {
        self.metrics.graph()
    }

    /// The address of the actor operator vertex `name`, which must run `Op` (added with
    /// [`KeyedStream::actor`](crate::KeyedStream::actor)). Fails with
    /// [`Error::NoSuchEndpoint`] for a vertex that does not exist, is not an actor operator,
    /// or runs another type.
    pub fn operator<Op: ActorOperator>(&self, name: &str) -> Result<OperatorRef<Op>> {
        OperatorRef::lookup(&self.outside, name)
    }

    /// The address of non-keyed actor operator vertex `name`, which must run `Op` (added with
    /// [`Stream::actor`](crate::Stream::actor)): its instances by index. Fails with
    /// [`Error::NoSuchEndpoint`] for a vertex that does not exist, is not a non-keyed actor
    /// operator, or runs another type.
    pub fn instance_operator<Op: InstanceOperator>(&self, name: &str) -> Result<InstanceRef<Op>> {
        InstanceRef::lookup(&self.outside, name)
    }

    /// The ingress vertex `name`, which must take records of type `T` (added with
    /// [`JobBuilder::ingress`](crate::JobBuilder::ingress)). Fails with
    /// [`Error::NoSuchEndpoint`] for a vertex that does not exist, is not an ingress, or takes
    /// another type.
    pub fn ingress<T: serde::Serialize + Send + 'static>(&self, name: &str) -> Result<Ingress<T>> {
        Ingress::lookup(&self.outside, name)
    }
}
