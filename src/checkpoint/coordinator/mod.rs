//! The checkpoint coordinator's decisions: the pure protocol core, without actors or clocks.
//!
//! States of one checkpoint: *triggered* (barriers injected at the sources) → *acked by every
//! task* → *complete* (the manifest is written by the driver, which then calls
//! [`CheckpointCoordinator::complete`]) — or *aborted* (timeout, a declined task, a failure).
//! At most one checkpoint is in flight. A new one is triggered only when none is in flight,
//! the interval has passed since the previous trigger, and the minimum pause has passed since
//! the previous checkpoint ended.
//!
//! Failures: an abort caused by the checkpoint itself ([`CheckpointCoordinator::fail`]: a
//! storage error, a timeout, a task that could not write its state) counts; one caused by a task
//! failure ([`CheckpointCoordinator::abort`]) does not. After `k` consecutive counted failures
//! nothing is triggered for `backoff * 2^(k-1)` (at most 64 times `backoff`), and the failure
//! after the tolerated number tells the driver to give up. A completed checkpoint resets the
//! count.
//!
//! Final checkpoints: after a final checkpoint completes nothing more is triggered, unless the
//! request it answered was withdrawn ([`CheckpointCoordinator::cancel_final`]) or renewed
//! ([`CheckpointCoordinator::rearm`]) while it was in flight: then its completion ends nothing.
//!
//! The checkpoint coordinator actor (`actor.rs`, next to this core) owns a coordinator, feeds it
//! the current time and the acks the job master relays, and carries its answers out
//! ([`AckOutcome`], [`Trigger`]).

pub(crate) mod actor;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::CheckpointId;

/// Timing of periodic checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointTiming {
    /// Trigger a checkpoint this often; `None` turns periodic checkpoints off (on-demand and
    /// final checkpoints still run).
    pub interval: Option<Duration>,
    /// Abort a checkpoint that is not complete after this long.
    pub timeout: Duration,
    /// The least time between the end of one checkpoint and the trigger of the next.
    pub min_pause: Duration,
}

impl Default for CheckpointTiming {
    fn default() -> Self {
        CheckpointTiming {
            interval: Some(Duration::from_secs(1)),
            timeout: Duration::from_secs(60),
            min_pause: Duration::ZERO,
        }
    }
}

impl CheckpointTiming {
    /// Periodic checkpoints every `interval`, with the default timeout (60 s) and no minimum
    /// pause.
    ///
    /// ```
    /// use std::time::Duration;
    /// use snapflow::checkpoint::CheckpointTiming;
    ///
    /// let t = CheckpointTiming::every(Duration::from_millis(100)).with_timeout(Duration::from_secs(10));
    /// assert_eq!(t.interval, Some(Duration::from_millis(100)));
    /// assert_eq!(t.timeout, Duration::from_secs(10));
    /// assert_eq!(CheckpointTiming::off().interval, None);
    /// ```
    pub fn every(interval: Duration) -> Self {
        CheckpointTiming {
            interval: Some(interval),
            ..CheckpointTiming::default()
        }
    }

    /// No periodic checkpoints; on-demand and final checkpoints still run.
    pub fn off() -> Self {
        CheckpointTiming {
            interval: None,
            ..CheckpointTiming::default()
        }
    }

    /// The same timing, aborting a checkpoint that is not complete after `timeout`.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        CheckpointTiming { timeout, ..self }
    }
}

/// A checkpoint to trigger now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// Its id.
    pub checkpoint: CheckpointId,
    /// True for the final checkpoint of a bounded job or a graceful stop.
    pub is_final: bool,
    /// True for a savepoint: aligned whatever the checkpoint mode, never removed by retention.
    pub savepoint: bool,
}

/// What an acknowledgement led to.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome<A> {
    /// The ack is for a checkpoint that is no longer in flight (aborted or unknown): ignore it.
    Stale,
    /// More acks are expected.
    Pending,
    /// Every task has acked: write the manifest from these acks, then call `complete`.
    AllAcked {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// True for a final checkpoint.
        is_final: bool,
        /// True for a savepoint.
        savepoint: bool,
        /// Every task's ack, by task number.
        acks: BTreeMap<usize, A>,
        /// When it was triggered.
        triggered_at: Instant,
    },
}

/// What a counted checkpoint failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// The checkpoint was not in flight: nothing changed.
    Stale,
    /// Tolerated: the next checkpoint is triggered no earlier than `after` from now.
    Retry {
        /// Consecutive failures so far.
        failures: u32,
        /// The back-off before the next trigger.
        after: Duration,
    },
    /// More consecutive failures than tolerated: the job should fail.
    GiveUp {
        /// Consecutive failures.
        failures: u32,
    },
}

#[derive(Debug)]
struct InFlight<A> {
    id: CheckpointId,
    is_final: bool,
    savepoint: bool,
    /// False once the final request this checkpoint answers was withdrawn or renewed while it
    /// was in flight: its completion then ends nothing.
    ends_job: bool,
    triggered_at: Instant,
    acks: BTreeMap<usize, A>,
    all_acked: bool,
}

/// The decisions of a checkpoint coordinator for a job of `tasks` tasks. `A` is whatever a
/// task's acknowledgement carries (its state handle, offsets, metrics).
#[derive(Debug)]
pub struct CheckpointCoordinator<A> {
    timing: CheckpointTiming,
    tasks: usize,
    next_id: CheckpointId,
    in_flight: Option<InFlight<A>>,
    last_trigger: Option<Instant>,
    last_end: Option<Instant>,
    on_demand: bool,
    final_requested: bool,
    savepoint_requested: bool,
    finished: bool,
    tolerable_failures: u32,
    backoff: Duration,
    failures: u32,
    not_before: Option<Instant>,
}

impl<A> CheckpointCoordinator<A> {
    /// A coordinator whose first checkpoint will be `first`.
    pub fn new(timing: CheckpointTiming, tasks: usize, first: CheckpointId) -> Self {
        CheckpointCoordinator {
            timing,
            tasks,
            next_id: first,
            in_flight: None,
            last_trigger: None,
            last_end: None,
            on_demand: false,
            final_requested: false,
            savepoint_requested: false,
            finished: false,
            tolerable_failures: u32::MAX,
            backoff: Duration::ZERO,
            failures: 0,
            not_before: None,
        }
    }

    /// Tolerates `tolerable` consecutive counted failures (the next one gives up), backing off
    /// `backoff * 2^(k-1)` after the `k`-th (at most 64 times `backoff`). Without it: every
    /// failure is tolerated, with no back-off.
    pub fn with_failure_policy(mut self, tolerable: u32, backoff: Duration) -> Self {
        self.tolerable_failures = tolerable;
        self.backoff = backoff;
        self
    }

    /// Consecutive counted failures since the last completed checkpoint.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// The checkpoint in flight, if any.
    pub fn in_flight(&self) -> Option<CheckpointId> {
        self.in_flight.as_ref().map(|f| f.id)
    }

    /// Asks for a checkpoint as soon as the one in flight (if any) ends.
    pub fn request_now(&mut self) {
        self.on_demand = true;
    }

    /// Asks for the final checkpoint: it is triggered as soon as nothing is in flight, and no
    /// periodic checkpoint is triggered after the request.
    pub fn request_final(&mut self) {
        self.final_requested = true;
    }

    /// Asks for a savepoint: the next checkpoint triggered (as soon as nothing is in flight) is
    /// a savepoint, and so is every one after it until a savepoint completes (one that is
    /// aborted is tried again).
    pub fn request_savepoint(&mut self) {
        self.savepoint_requested = true;
    }

    /// True while a savepoint is asked for and none has completed since.
    pub fn savepoint_requested(&self) -> bool {
        self.savepoint_requested
    }

    /// Withdraws a final-checkpoint request (the input did not end after all: a restarted
    /// source must read again).
    pub fn cancel_final(&mut self) {
        self.final_requested = false;
        self.finished = false;
        self.supersede_final();
    }

    /// Allows triggers again after a final checkpoint completed (a task failed before every
    /// task had committed it, and its region is being restored). A final checkpoint still in
    /// flight no longer ends anything when it completes: the request stands, and another final
    /// checkpoint follows it.
    pub fn rearm(&mut self) {
        self.finished = false;
        self.supersede_final();
    }

    fn supersede_final(&mut self) {
        if let Some(f) = self.in_flight.as_mut() {
            f.ends_job = false;
        }
    }

    /// True once a final checkpoint has completed (and nothing renewed the request since).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether a checkpoint should be triggered at `now`, and if so which. Call it on every
    /// timer tick; it starts the checkpoint it returns.
    pub fn poll_trigger(&mut self, now: Instant) -> Option<Trigger> {
        if self.in_flight.is_some() || self.finished {
            return None;
        }
        if self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        if self
            .last_end
            .is_some_and(|end| now.saturating_duration_since(end) < self.timing.min_pause)
            && !self.final_requested
        {
            return None;
        }
        let is_final = self.final_requested;
        let periodic_due = match (self.timing.interval, self.last_trigger) {
            (Some(_), None) => true,
            (Some(i), Some(t)) => now.saturating_duration_since(t) >= i,
            (None, _) => false,
        };
        let savepoint = self.savepoint_requested;
        if !(is_final || savepoint || self.on_demand || periodic_due) {
            return None;
        }
        let id = self.next_id;
        self.next_id = CheckpointId(id.0 + 1);
        self.on_demand = false;
        self.last_trigger = Some(now);
        self.in_flight = Some(InFlight {
            id,
            is_final,
            savepoint,
            ends_job: is_final,
            triggered_at: now,
            acks: BTreeMap::new(),
            all_acked: false,
        });
        Some(Trigger {
            checkpoint: id,
            is_final,
            savepoint,
        })
    }

    /// Records task `task`'s acknowledgement of `checkpoint`.
    pub fn on_ack(&mut self, checkpoint: CheckpointId, task: usize, ack: A) -> AckOutcome<A> {
        let Some(f) = self.in_flight.as_mut() else {
            return AckOutcome::Stale;
        };
        if f.id != checkpoint || f.all_acked {
            return AckOutcome::Stale;
        }
        assert!(
            task < self.tasks,
            "invariant: task number {task} out of range"
        );
        let duplicate = f.acks.insert(task, ack).is_some();
        assert!(
            !duplicate,
            "invariant: task {task} acked checkpoint {checkpoint} twice"
        );
        if f.acks.len() < self.tasks {
            return AckOutcome::Pending;
        }
        f.all_acked = true;
        AckOutcome::AllAcked {
            checkpoint,
            is_final: f.is_final,
            savepoint: f.savepoint,
            acks: std::mem::take(&mut f.acks),
            triggered_at: f.triggered_at,
        }
    }

    /// The manifest of `checkpoint` is written: it is complete.
    pub fn complete(&mut self, checkpoint: CheckpointId, now: Instant) {
        if let Some(f) = self.in_flight.as_ref().filter(|f| f.id == checkpoint) {
            // After the final checkpoint nothing more is triggered, unless its request was
            // withdrawn or renewed meanwhile.
            self.finished = f.ends_job;
            if f.savepoint {
                self.savepoint_requested = false;
            }
            self.in_flight = None;
            self.last_end = Some(now);
            self.failures = 0;
            self.not_before = None;
        }
    }

    /// Aborts `checkpoint` for a reason of its own (storage error, timeout, a task that could
    /// not write its state): counted against the tolerance, and followed by a back-off.
    pub fn fail(&mut self, checkpoint: CheckpointId, now: Instant) -> FailOutcome {
        if !self.abort(checkpoint, now) {
            return FailOutcome::Stale;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures > self.tolerable_failures {
            return FailOutcome::GiveUp {
                failures: self.failures,
            };
        }
        let after = self.backoff * (1u32 << (self.failures - 1).min(6));
        self.not_before = Some(now + after);
        FailOutcome::Retry {
            failures: self.failures,
            after,
        }
    }

    /// Aborts `checkpoint` if it is in flight, for a cause outside the checkpoint (a task
    /// failed): not counted as a checkpoint failure. Returns true if it was in flight. A final
    /// checkpoint that is aborted is requested again.
    pub fn abort(&mut self, checkpoint: CheckpointId, now: Instant) -> bool {
        if self.in_flight.as_ref().is_some_and(|f| f.id == checkpoint) {
            self.in_flight = None;
            self.last_end = Some(now);
            true
        } else {
            false
        }
    }

    /// The checkpoint in flight if it has passed its timeout at `now` (without all its acks).
    pub fn timed_out(&self, now: Instant) -> Option<CheckpointId> {
        self.in_flight
            .as_ref()
            .filter(|f| {
                !f.all_acked && now.saturating_duration_since(f.triggered_at) >= self.timing.timeout
            })
            .map(|f| f.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(interval_ms: u64) -> CheckpointTiming {
        CheckpointTiming {
            interval: Some(Duration::from_millis(interval_ms)),
            timeout: Duration::from_millis(500),
            min_pause: Duration::from_millis(50),
        }
    }

    #[test]
    fn one_checkpoint_in_flight_and_ids_only_grow() {
        let t = Instant::now();
        let mut c = CheckpointCoordinator::<()>::new(timing(100), 2, CheckpointId(5));
        let first = c.poll_trigger(t).expect("first trigger");
        assert_eq!(first.checkpoint, CheckpointId(5));
        assert_eq!(
            c.poll_trigger(t + Duration::from_secs(1)),
            None,
            "one in flight"
        );
        assert_eq!(c.on_ack(CheckpointId(5), 0, ()), AckOutcome::Pending);
        assert!(matches!(
            c.on_ack(CheckpointId(5), 1, ()),
            AckOutcome::AllAcked { .. }
        ));
        c.complete(CheckpointId(5), t + Duration::from_millis(10));
        assert_eq!(
            c.poll_trigger(t + Duration::from_millis(40)),
            None,
            "min pause"
        );
        assert_eq!(
            c.poll_trigger(t + Duration::from_millis(120))
                .map(|t| t.checkpoint),
            Some(CheckpointId(6))
        );
    }

    #[test]
    fn a_timed_out_checkpoint_is_aborted_and_late_acks_are_stale() {
        let t = Instant::now();
        let mut c = CheckpointCoordinator::<()>::new(timing(100), 2, CheckpointId(1));
        c.poll_trigger(t);
        c.on_ack(CheckpointId(1), 0, ());
        assert_eq!(c.timed_out(t + Duration::from_millis(499)), None);
        assert_eq!(
            c.timed_out(t + Duration::from_millis(500)),
            Some(CheckpointId(1))
        );
        assert!(c.abort(CheckpointId(1), t + Duration::from_millis(500)));
        assert_eq!(c.on_ack(CheckpointId(1), 1, ()), AckOutcome::Stale);
        let next = c
            .poll_trigger(t + Duration::from_millis(600))
            .expect("next");
        assert_eq!(next.checkpoint, CheckpointId(2));
    }

    #[test]
    fn final_and_on_demand_checkpoints_ignore_the_interval() {
        let t = Instant::now();
        let mut c = CheckpointCoordinator::<()>::new(
            CheckpointTiming {
                interval: None,
                ..timing(1)
            },
            1,
            CheckpointId(1),
        );
        assert_eq!(c.poll_trigger(t), None, "periodic checkpoints are off");
        c.request_now();
        assert_eq!(c.poll_trigger(t).map(|x| x.is_final), Some(false));
        c.on_ack(CheckpointId(1), 0, ());
        c.complete(CheckpointId(1), t);
        c.request_final();
        assert_eq!(
            c.poll_trigger(t),
            Some(Trigger {
                checkpoint: CheckpointId(2),
                is_final: true,
                savepoint: false,
            })
        );
    }

    #[test]
    fn a_savepoint_request_is_tried_again_until_a_savepoint_completes() {
        let t = Instant::now();
        let mut c = CheckpointCoordinator::<()>::new(CheckpointTiming::off(), 1, CheckpointId(1));
        assert_eq!(c.poll_trigger(t), None, "periodic checkpoints are off");
        c.request_savepoint();
        let first = c.poll_trigger(t).expect("a savepoint is triggered at once");
        assert!(first.savepoint && !first.is_final);
        assert!(c.abort(first.checkpoint, t), "a task failed: aborted");
        let again = c.poll_trigger(t).expect("the savepoint is tried again");
        assert!(again.savepoint);
        assert!(again.checkpoint > first.checkpoint);
        assert!(matches!(
            c.on_ack(again.checkpoint, 0, ()),
            AckOutcome::AllAcked {
                savepoint: true,
                ..
            }
        ));
        c.complete(again.checkpoint, t);
        assert!(!c.savepoint_requested());
        assert_eq!(c.poll_trigger(t), None, "no savepoint after one completed");
    }

    #[test]
    fn a_final_checkpoint_whose_request_was_withdrawn_in_flight_ends_nothing() {
        let t = Instant::now();
        for withdraw in ["cancel_final", "rearm"] {
            let mut c = CheckpointCoordinator::<()>::new(timing(100), 1, CheckpointId(1));
            c.request_final();
            let f = c.poll_trigger(t).expect("final");
            assert!(f.is_final);
            assert!(matches!(
                c.on_ack(f.checkpoint, 0, ()),
                AckOutcome::AllAcked { .. }
            ));
            // A task fails while the manifest is written: the request is withdrawn (the input
            // must be read again) or renewed (a stop stands).
            match withdraw {
                "cancel_final" => c.cancel_final(),
                _ => c.rearm(),
            }
            c.complete(f.checkpoint, t);
            assert!(!c.is_finished(), "{withdraw}: the completion ended the job");
            c.request_final();
            let again = c
                .poll_trigger(t + Duration::from_millis(60))
                .unwrap_or_else(|| panic!("{withdraw}: no new final checkpoint"));
            assert!(again.is_final);
            c.on_ack(again.checkpoint, 0, ());
            c.complete(again.checkpoint, t);
            assert!(c.is_finished(), "{withdraw}");
            assert_eq!(c.poll_trigger(t + Duration::from_secs(9)), None);
        }
    }

    #[test]
    fn counted_failures_back_off_and_give_up_after_the_tolerance_and_a_success_resets() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // No minimum pause: only the back-off holds triggers back.
        let quick = CheckpointTiming {
            interval: Some(ms(1)),
            timeout: ms(500),
            min_pause: Duration::ZERO,
        };
        let mut c = CheckpointCoordinator::<()>::new(quick, 1, CheckpointId(1))
            .with_failure_policy(2, ms(10));
        let mut now = t;
        let first = c.poll_trigger(now).expect("trigger");
        assert_eq!(
            c.fail(first.checkpoint, now),
            FailOutcome::Retry {
                failures: 1,
                after: ms(10)
            }
        );
        assert_eq!(c.poll_trigger(now + ms(9)), None, "backing off");
        now += ms(10);
        let second = c.poll_trigger(now).expect("after the back-off");
        assert_eq!(
            c.fail(second.checkpoint, now),
            FailOutcome::Retry {
                failures: 2,
                after: ms(20)
            }
        );
        assert_eq!(c.poll_trigger(now + ms(19)), None, "the back-off doubles");
        // An abort caused by a task failure is not counted, and adds no back-off.
        now += ms(20);
        let third = c.poll_trigger(now).expect("trigger");
        assert!(c.abort(third.checkpoint, now));
        assert_eq!(c.consecutive_failures(), 2);
        now += ms(1);
        let fourth = c.poll_trigger(now).expect("trigger");
        assert_eq!(
            c.fail(fourth.checkpoint, now),
            FailOutcome::GiveUp { failures: 3 }
        );
        assert_eq!(c.fail(fourth.checkpoint, now), FailOutcome::Stale);
        // A completed checkpoint resets the count.
        let mut c = CheckpointCoordinator::<()>::new(quick, 1, CheckpointId(1))
            .with_failure_policy(1, ms(1));
        let a = c.poll_trigger(t).expect("trigger");
        c.fail(a.checkpoint, t);
        let b = c.poll_trigger(t + ms(60)).expect("trigger");
        c.on_ack(b.checkpoint, 0, ());
        c.complete(b.checkpoint, t + ms(60));
        assert_eq!(c.consecutive_failures(), 0);
        let d = c.poll_trigger(t + ms(120)).expect("trigger");
        assert!(matches!(
            c.fail(d.checkpoint, t + ms(120)),
            FailOutcome::Retry { .. }
        ));
    }
}
