//! The pure core of a job's supervisor tree: the state of every failover region, one failure
//! in, one [`Decision`] out. No actors, no clock (time is a parameter): the job master's actor
//! only carries out what this decides, and every state and event can be tested on its own.
//!
//! The tree: the tasks of a failover region are supervised by that region; every region is
//! supervised by the job; the job's failure goes to the application (its `JobHandle`). Each
//! level has its own [`RestartStrategy`] and budget:
//!
//! - a failure of class [`ErrorClass::Fatal`] fails the job at once: no restart can fix it;
//! - otherwise the failed task's region asks its own strategy: restart the region (after a
//!   delay), or, once its budget is spent, escalate to the job;
//! - an escalation asks the job's strategy: restart the whole job from the latest complete
//!   checkpoint (every region, each with a fresh budget), or give up and fail the job.
//!
//! **Invariants:** a report from an incarnation that has been replaced never acts
//! ([`Decision::Stale`]); a region spends only its own budget, so a flapping region cannot use
//! up a healthy one's; a failure that arrives while its region (or the job) is still being
//! created is kept, not lost, and acted on once the region runs ([`Decision::Deferred`]);
//! every restart moves the regions it restarts to a new incarnation.

use std::time::{Duration, Instant};

use super::strategy::{RestartDecision, RestartStrategy, RestartTracker};
use crate::error::ErrorClass;

/// Where a failover region is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegionState {
    /// Its tasks are being created for the first time (the job is starting).
    Starting,
    /// Its tasks run.
    Running,
    /// Its tasks were stopped after a failure; its restore waits for the restart delay.
    Down,
    /// Its restore is under way: the checkpoint is being read and its tasks created.
    Restoring,
}

/// What to do about one failure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// The report comes from an incarnation that has been replaced: ignore it.
    Stale,
    /// The region is being created or restored, so its actors are not all known yet: the
    /// failure is kept and handed back once the region runs ([`SupervisionCore::restored`],
    /// [`SupervisionCore::started`]).
    Deferred,
    /// Restart `region` after `delay`; this is the region's restart number `attempt`.
    RestartRegion {
        /// The region.
        region: usize,
        /// The delay before its restore.
        delay: Duration,
        /// Its restart number, from 1.
        attempt: u32,
    },
    /// `region` spent its budget: restart the whole job after `delay` (every region, from the
    /// latest complete checkpoint); this is the job's full restart number `attempt`.
    RestartJob {
        /// The region that escalated.
        region: usize,
        /// Why it escalated (its strategy's reason).
        reason: String,
        /// The delay before the restore.
        delay: Duration,
        /// The job's full restart number, from 1.
        attempt: u32,
    },
    /// The failure is fatal: fail the job with it now.
    FailFatal,
    /// The job's strategy gave up too: fail the job with the failure.
    GiveUp {
        /// Why, level by level ("region 0: ...; job: ...").
        reason: String,
    },
}

#[derive(Debug)]
struct Region<F> {
    state: RegionState,
    incarnation: u32,
    tracker: RestartTracker,
    /// The first failure reported while the region was not running.
    deferred: Option<F>,
}

/// The supervision state of one job: its regions and the job level. `F` is what the caller
/// needs back of a deferred failure (the job master keeps the task and its error).
#[derive(Debug)]
pub(crate) struct SupervisionCore<F> {
    regions: Vec<Region<F>>,
    region_strategy: RestartStrategy,
    job: RestartTracker,
    seed: u64,
    region_restarts: u32,
}

impl<F> SupervisionCore<F> {
    /// `regions` regions, all starting; each follows `region` with its own budget, and the job
    /// follows `job`. `seed` drives the strategies' jitter.
    pub(crate) fn new(
        regions: usize,
        region: RestartStrategy,
        job: RestartStrategy,
        seed: u64,
    ) -> Self {
        let mut core = SupervisionCore {
            regions: Vec::with_capacity(regions),
            region_strategy: region,
            job: RestartTracker::new(job, seed),
            seed,
            region_restarts: 0,
        };
        for r in 0..regions {
            let tracker = core.fresh_tracker(r, 0);
            core.regions.push(Region {
                state: RegionState::Starting,
                incarnation: 0,
                tracker,
                deferred: None,
            });
        }
        core
    }

    fn fresh_tracker(&self, region: usize, generation: u32) -> RestartTracker {
        let mix = (region as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(generation);
        RestartTracker::new(self.region_strategy.clone(), self.seed ^ mix)
    }

    /// The region's state.
    #[cfg(test)]
    pub(crate) fn state(&self, region: usize) -> RegionState {
        self.regions[region].state
    }

    /// The region's current incarnation: reports from any other are stale.
    pub(crate) fn incarnation(&self, region: usize) -> u32 {
        self.regions[region].incarnation
    }

    /// True once the job's first creation has finished ([`started`](Self::started)).
    pub(crate) fn job_started(&self) -> bool {
        self.regions
            .iter()
            .all(|r| r.state != RegionState::Starting)
    }

    /// True when every region runs.
    pub(crate) fn all_running(&self) -> bool {
        self.regions.iter().all(|r| r.state == RegionState::Running)
    }

    /// True when `region` runs.
    pub(crate) fn is_running(&self, region: usize) -> bool {
        self.regions[region].state == RegionState::Running
    }

    /// Restarts of single regions so far.
    pub(crate) fn region_restarts(&self) -> u32 {
        self.region_restarts
    }

    /// Full restarts of the job so far (after an escalation).
    pub(crate) fn job_restarts(&self) -> u32 {
        self.job.restarts()
    }

    /// A task of `region`, of incarnation `incarnation`, failed with an error of `class` at
    /// `now`; `failure` is kept if the decision is [`Decision::Deferred`].
    pub(crate) fn on_failure(
        &mut self,
        region: usize,
        incarnation: u32,
        class: ErrorClass,
        failure: F,
        now: Instant,
    ) -> Decision {
        let Some(r) = self.regions.get_mut(region) else {
            return Decision::Stale;
        };
        if incarnation != r.incarnation {
            return Decision::Stale;
        }
        if class == ErrorClass::Fatal {
            return Decision::FailFatal;
        }
        match r.state {
            RegionState::Starting | RegionState::Down | RegionState::Restoring => {
                if r.deferred.is_none() {
                    r.deferred = Some(failure);
                }
                return Decision::Deferred;
            }
            RegionState::Running => {}
        }
        match r.tracker.on_failure(now) {
            RestartDecision::Restart { delay, attempt } => {
                r.state = RegionState::Down;
                r.incarnation += 1;
                self.region_restarts += 1;
                Decision::RestartRegion {
                    region,
                    delay,
                    attempt,
                }
            }
            RestartDecision::GiveUp { reason } => {
                let reason = format!("region {region}: {reason}");
                match self.job.on_failure(now) {
                    RestartDecision::Restart { delay, attempt } => {
                        for i in 0..self.regions.len() {
                            let tracker = self.fresh_tracker(i, attempt);
                            let r = &mut self.regions[i];
                            r.state = RegionState::Down;
                            r.incarnation += 1;
                            r.tracker = tracker;
                            r.deferred = None;
                        }
                        Decision::RestartJob {
                            region,
                            reason,
                            delay,
                            attempt,
                        }
                    }
                    RestartDecision::GiveUp { reason: job } => Decision::GiveUp {
                        reason: format!("{reason}; job: {job}"),
                    },
                }
            }
        }
    }

    /// The restart delay of `region` has passed: its restore begins.
    pub(crate) fn restoring(&mut self, region: usize) {
        if let Some(r) = self.regions.get_mut(region) {
            if r.state == RegionState::Down {
                r.state = RegionState::Restoring;
            }
        }
    }

    /// `region`'s tasks were created again and run: returns the failure deferred meanwhile,
    /// which the caller must hand to [`on_failure`](Self::on_failure) again.
    pub(crate) fn restored(&mut self, region: usize) -> Option<F> {
        let r = self.regions.get_mut(region)?;
        if r.state != RegionState::Restoring {
            return None;
        }
        r.state = RegionState::Running;
        r.deferred.take()
    }

    /// Every task of the job was created for the first time: every region runs. Returns the
    /// failures deferred meanwhile (at most one per region).
    pub(crate) fn started(&mut self) -> Vec<F> {
        let mut early = Vec::new();
        for r in &mut self.regions {
            if r.state == RegionState::Starting {
                r.state = RegionState::Running;
                early.extend(r.deferred.take());
            }
        }
        early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fixed(max_attempts: u32) -> RestartStrategy {
        RestartStrategy::FixedDelay {
            delay: 5 * MS,
            max_attempts,
        }
    }

    /// A core of two regions with region budget `region` and job budget `job`, moved to
    /// `state` (region 0 only; region 1 runs unless the state is `Starting`).
    fn core_in(state: RegionState, region: u32, job: u32) -> SupervisionCore<&'static str> {
        let mut c = SupervisionCore::new(2, fixed(region), fixed(job), 1);
        if state == RegionState::Starting {
            return c;
        }
        c.started();
        if state == RegionState::Running {
            return c;
        }
        let d = c.on_failure(0, 0, ErrorClass::Restart, "down", Instant::now());
        assert!(matches!(d, Decision::RestartRegion { .. }), "{d:?}");
        if state == RegionState::Restoring {
            c.restoring(0);
        }
        assert_eq!(c.state(0), state);
        c
    }

    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// A failure of region 0 from an older incarnation.
        StaleFailure,
        /// A failure of the current incarnation with this class.
        Failure(ErrorClass),
    }

    #[test]
    fn every_state_and_event_gives_the_documented_decision() {
        use ErrorClass::*;
        use RegionState::*;
        // (state of region 0, region budget, job budget, event, decision kind, state after)
        let table: &[(RegionState, u32, u32, Event, &str, RegionState)] = &[
            // A stale report never acts, whatever the state.
            (Starting, 5, 3, Event::StaleFailure, "stale", Starting),
            (Running, 5, 3, Event::StaleFailure, "stale", Running),
            (Down, 5, 3, Event::StaleFailure, "stale", Down),
            (Restoring, 5, 3, Event::StaleFailure, "stale", Restoring),
            // A fatal error fails the job in every state.
            (Starting, 5, 3, Event::Failure(Fatal), "fatal", Starting),
            (Running, 5, 3, Event::Failure(Fatal), "fatal", Running),
            (Down, 5, 3, Event::Failure(Fatal), "fatal", Down),
            (Restoring, 5, 3, Event::Failure(Fatal), "fatal", Restoring),
            // Not running yet: kept for later.
            (
                Starting,
                5,
                3,
                Event::Failure(Restart),
                "deferred",
                Starting,
            ),
            (Down, 5, 3, Event::Failure(Retryable), "deferred", Down),
            (
                Restoring,
                5,
                3,
                Event::Failure(Restart),
                "deferred",
                Restoring,
            ),
            // Running: the region's budget first, then the job's.
            (Running, 5, 3, Event::Failure(Restart), "region", Down),
            (Running, 5, 3, Event::Failure(Retryable), "region", Down),
            (Running, 0, 3, Event::Failure(Restart), "job", Down),
            (Running, 0, 0, Event::Failure(Restart), "give up", Running),
        ];
        for (i, &(state, region, job, event, kind, after)) in table.iter().enumerate() {
            let mut c = core_in(state, region, job);
            let current = c.incarnation(0);
            let d = match event {
                Event::StaleFailure => c.on_failure(
                    0,
                    current.wrapping_sub(1),
                    ErrorClass::Restart,
                    "x",
                    Instant::now(),
                ),
                Event::Failure(class) => c.on_failure(0, current, class, "x", Instant::now()),
            };
            let got = match &d {
                Decision::Stale => "stale",
                Decision::Deferred => "deferred",
                Decision::RestartRegion { region: 0, .. } => "region",
                Decision::RestartJob { region: 0, .. } => "job",
                Decision::FailFatal => "fatal",
                Decision::GiveUp { .. } => "give up",
                _ => "other",
            };
            assert_eq!(got, kind, "row {i}: {state:?} + {event:?} gave {d:?}");
            assert_eq!(c.state(0), after, "row {i}: state after {event:?}");
            let moved = matches!(
                d,
                Decision::RestartRegion { .. } | Decision::RestartJob { .. }
            );
            assert_eq!(
                c.incarnation(0),
                current + u32::from(moved),
                "row {i}: a restart, and only a restart, moves to a new incarnation"
            );
        }
    }

    /// Brings a region that is down back: its restore begins and ends.
    fn back<F>(c: &mut SupervisionCore<F>, region: usize) -> Option<F> {
        c.restoring(region);
        c.restored(region)
    }

    #[test]
    fn a_flapping_region_escalates_without_spending_another_regions_budget() {
        let t = Instant::now();
        let mut c: SupervisionCore<()> = SupervisionCore::new(2, fixed(2), fixed(1), 9);
        c.started();
        for attempt in 1..=2 {
            let inc = c.incarnation(0);
            let d = c.on_failure(0, inc, ErrorClass::Restart, (), t);
            assert_eq!(
                d,
                Decision::RestartRegion {
                    region: 0,
                    delay: 5 * MS,
                    attempt
                }
            );
            assert_eq!(back(&mut c, 0), None);
        }
        // Region 1 still has its whole budget.
        let d = c.on_failure(1, 0, ErrorClass::Restart, (), t);
        assert!(
            matches!(
                d,
                Decision::RestartRegion {
                    region: 1,
                    attempt: 1,
                    ..
                }
            ),
            "{d:?}"
        );
        back(&mut c, 1);
        // Region 0's third failure escalates: a full restart, every region down.
        let d = c.on_failure(0, c.incarnation(0), ErrorClass::Restart, (), t);
        match &d {
            Decision::RestartJob {
                region: 0,
                attempt: 1,
                reason,
                ..
            } => assert!(
                reason.starts_with("region 0: 2 restarts allowed"),
                "{reason}"
            ),
            other => panic!("expected a full restart, got {other:?}"),
        }
        assert_eq!(
            (c.state(0), c.state(1)),
            (RegionState::Down, RegionState::Down)
        );
        back(&mut c, 0);
        back(&mut c, 1);
        assert!(c.all_running());
        // After the full restart region 0 has a fresh budget...
        let d = c.on_failure(0, c.incarnation(0), ErrorClass::Restart, (), t);
        assert!(
            matches!(
                d,
                Decision::RestartRegion {
                    region: 0,
                    attempt: 1,
                    ..
                }
            ),
            "{d:?}"
        );
        back(&mut c, 0);
        let _ = c.on_failure(0, c.incarnation(0), ErrorClass::Restart, (), t);
        back(&mut c, 0);
        // ...and when it is spent again the job, whose one full restart is used, gives up.
        let d = c.on_failure(0, c.incarnation(0), ErrorClass::Restart, (), t);
        match d {
            Decision::GiveUp { reason } => assert!(
                reason.contains("region 0:") && reason.contains("; job: 1 restarts allowed"),
                "{reason}"
            ),
            other => panic!("expected the job to give up, got {other:?}"),
        }
        assert_eq!((c.region_restarts(), c.job_restarts()), (5, 1));
    }

    #[test]
    fn a_failure_while_a_region_is_created_is_handed_back_once_it_runs() {
        let t = Instant::now();
        let mut c: SupervisionCore<&str> = SupervisionCore::new(2, fixed(5), fixed(0), 3);
        assert!(!c.job_started());
        assert_eq!(
            c.on_failure(1, 0, ErrorClass::Restart, "early", t),
            Decision::Deferred
        );
        assert_eq!(
            c.on_failure(1, 0, ErrorClass::Restart, "second", t),
            Decision::Deferred
        );
        assert_eq!(
            c.started(),
            vec!["early"],
            "the first deferred failure, once"
        );
        assert!(c.job_started() && c.all_running());
        let d = c.on_failure(1, 0, ErrorClass::Restart, "again", t);
        assert!(
            matches!(d, Decision::RestartRegion { region: 1, .. }),
            "{d:?}"
        );
        assert!(!c.is_running(1) && c.is_running(0));
        assert_eq!(
            c.restored(1),
            None,
            "not restoring yet: nothing to hand back"
        );
        c.restoring(1);
        assert_eq!(
            c.on_failure(1, 1, ErrorClass::Retryable, "in open", t),
            Decision::Deferred
        );
        assert_eq!(c.restored(1), Some("in open"));
        assert_eq!(c.state(1), RegionState::Running);
    }
}
