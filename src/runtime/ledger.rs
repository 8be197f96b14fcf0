//! [`Ledger`]: what a job's report is made of, kept outside its supervisor so that it outlives
//! a supervisor incarnation.
//!
//! Every lifecycle event of the job goes through [`Ledger::emit`], which keeps it, forwards it
//! to the application's event recipient, and counts what the report counts (checkpoints
//! completed, the newest checkpoint triggered, region and job restarts). The job root and
//! every incarnation of the job master share one ledger, so a report after a supervisor
//! restart still lists every event and restart of the run.

use std::sync::{Arc, Mutex, MutexGuard};

use actix::Recipient;

use super::events::{JobEvent, Savepoint};
use super::metrics::{JobMetrics, Window};
use crate::checkpoint::CheckpointId;
use crate::error::Result;

/// The counters of one job run.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// The newest events (the configured event window), and how many there were.
    pub(crate) events: Window<JobEvent>,
    pub(crate) completed: u64,
    pub(crate) last_completed: Option<CheckpointId>,
    pub(crate) last_triggered: Option<CheckpointId>,
    pub(crate) region_restarts: u32,
    pub(crate) job_restarts: u32,
}

/// The shared event log and counters of one job run.
#[derive(Debug)]
pub(crate) struct Ledger {
    job: String,
    tally: Mutex<Tally>,
    sink: Option<Recipient<JobEvent>>,
    /// Keeps the notable events, with their time, in the timeline.
    metrics: Arc<JobMetrics>,
    /// Callers waiting for the next savepoint: they outlive a supervisor incarnation, whose
    /// successor asks for a savepoint again.
    savepoints: Mutex<Vec<tokio::sync::oneshot::Sender<Result<Savepoint>>>>,
}

impl Ledger {
    /// An empty ledger for job `job`, keeping the newest `window` events and forwarding every
    /// event to `sink` and the notable ones to `metrics`' timeline.
    pub(crate) fn new(
        job: String,
        window: usize,
        sink: Option<Recipient<JobEvent>>,
        metrics: Arc<JobMetrics>,
    ) -> Ledger {
        let tally = Tally {
            events: Window::new(window),
            completed: 0,
            last_completed: None,
            last_triggered: None,
            region_restarts: 0,
            job_restarts: 0,
        };
        Ledger {
            job,
            tally: Mutex::new(tally),
            sink,
            metrics,
            savepoints: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tally> {
        // Plain counters and a vector: consistent whatever a panicking holder did.
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event`, counts it, and forwards it to the application.
    pub(crate) fn emit(&self, event: JobEvent) {
        tracing::debug!(job = %self.job, event = ?event, "job event");
        if let Some(r) = &self.sink {
            r.do_send(event.clone());
        }
        self.metrics.event(&event);
        let mut t = self.lock();
        match &event {
            JobEvent::CheckpointCompleted { checkpoint } => {
                t.completed += 1;
                t.last_completed = Some(*checkpoint);
            }
            JobEvent::CheckpointTriggered { checkpoint, .. } => {
                t.last_triggered = t.last_triggered.max(Some(*checkpoint));
            }
            _ => {}
        }
        t.events.push(event);
    }

    /// Counts one restart: of a single region, or (`job`) of the whole job.
    pub(crate) fn count_restart(&self, job: bool) {
        let mut t = self.lock();
        if job {
            t.job_restarts += 1;
        } else {
            t.region_restarts += 1;
        }
    }

    /// The counters and events now.
    pub(crate) fn tally(&self) -> Tally {
        self.lock().clone()
    }

    /// Whether the last event recorded is the job's `JobFinished`.
    pub(crate) fn finished(&self) -> bool {
        matches!(
            self.lock().events.last(),
            Some(JobEvent::JobFinished { .. })
        )
    }

    fn waiters(&self) -> MutexGuard<'_, Vec<tokio::sync::oneshot::Sender<Result<Savepoint>>>> {
        // A vector of senders: consistent whatever a panicking holder did.
        self.savepoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `reply` until the next savepoint completes (or the job ends).
    pub(crate) fn wait_for_savepoint(
        &self,
        reply: tokio::sync::oneshot::Sender<Result<Savepoint>>,
    ) {
        self.waiters().push(reply);
    }

    /// Whether a caller waits for a savepoint.
    pub(crate) fn savepoint_wanted(&self) -> bool {
        self.waiters().iter().any(|w| !w.is_closed())
    }

    /// Answers every caller waiting for a savepoint with `result()`.
    pub(crate) fn answer_savepoints(&self, result: impl Fn() -> Result<Savepoint>) {
        for w in self.waiters().drain(..) {
            let _ = w.send(result());
        }
    }

    /// The newest checkpoint id triggered so far, if any.
    pub(crate) fn last_triggered(&self) -> Option<CheckpointId> {
        self.lock().last_triggered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_counts_completed_checkpoints_triggers_and_restarts() {
        let l = Ledger::new("j".into(), 2, None, Arc::new(JobMetrics::new("j", 2)));
        l.emit(JobEvent::CheckpointTriggered {
            checkpoint: CheckpointId(4),
            is_final: false,
        });
        l.emit(JobEvent::CheckpointTriggered {
            checkpoint: CheckpointId(3),
            is_final: false,
        });
        l.emit(JobEvent::CheckpointCompleted {
            checkpoint: CheckpointId(3),
        });
        l.count_restart(false);
        l.count_restart(true);
        l.count_restart(false);
        let t = l.tally();
        assert_eq!(
            t.events.to_vec().len(),
            2,
            "the window keeps the newest 2 events"
        );
        assert_eq!(t.events.total(), 3);
        assert!(matches!(
            t.events.last(),
            Some(JobEvent::CheckpointCompleted { .. })
        ));
        assert_eq!(t.completed, 1);
        assert_eq!(t.last_completed, Some(CheckpointId(3)));
        assert_eq!(l.last_triggered(), Some(CheckpointId(4)));
        assert_eq!((t.region_restarts, t.job_restarts), (2, 1));
    }
}
