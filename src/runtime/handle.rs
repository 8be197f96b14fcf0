//! [`JobHandle`]: how the embedding application follows and controls a running job.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use tokio::sync::oneshot;

use super::events::JobEvent;
use super::master::{Command, JobMaster};
use super::metrics::{JobMetrics, MetricsSnapshot};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// The job's name.
    pub job: String,
    /// Checkpoints completed during this run.
    pub checkpoints_completed: u64,
    /// The last checkpoint completed, if any.
    pub last_checkpoint: Option<CheckpointId>,
    /// The checkpoint the job resumed from when it started, if any.
    pub restored_from: Option<CheckpointId>,
    /// Restarts of failover regions.
    pub restarts: u32,
    /// Kills by the chaos monkey.
    pub kills: u32,
    /// How long the job ran.
    pub elapsed: Duration,
    /// The metrics at the end.
    pub metrics: MetricsSnapshot,
    /// Every lifecycle event, in order.
    pub events: Vec<JobEvent>,
}

/// A running job. Dropping the handle does not stop the job.
#[derive(Debug)]
pub struct JobHandle {
    pub(crate) master: Addr<JobMaster>,
    pub(crate) result: oneshot::Receiver<Result<JobReport>>,
    pub(crate) metrics: Arc<JobMetrics>,
}

impl JobHandle {
    /// Waits for the job to end: `Ok` once a bounded job's final checkpoint is committed (or a
    /// graceful stop completed), `Err` with the failure that ended it otherwise.
    pub async fn wait(self) -> Result<JobReport> {
        match self.result.await {
            Ok(r) => r,
            Err(_) => Err(Error::ActorGone {
                actor: "JobMaster",
                reason: "the job master stopped without a result (was its System stopped?)".into(),
            }),
        }
    }

    /// Asks for a checkpoint now (after the one in flight, if any).
    pub fn trigger_checkpoint(&self) {
        self.master.do_send(Command::TriggerCheckpoint);
    }

    /// Asks the job to stop gracefully: the sources stop reading, a final checkpoint is taken,
    /// sinks commit it, then the job ends with `Ok`. Follow with [`wait`](Self::wait).
    pub fn stop(&self) {
        self.master.do_send(Command::Stop);
    }

    /// Stops the job at once, without a final checkpoint. The job ends with
    /// [`Error::Cancelled`]; output not yet committed stays uncommitted.
    pub fn cancel(&self) {
        self.master.do_send(Command::Cancel);
    }

    /// The job's metrics now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
}
