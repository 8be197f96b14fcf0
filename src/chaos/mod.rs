//! Chaos: kill actors of a running job on purpose, reproducibly, and check that the results
//! stay exact.
//!
//! A [`ChaosMonkey`] attached to a job ([`JobBuilder::chaos`](crate::JobBuilder::chaos)) kills
//! on a schedule drawn from its seed: every `interval` (fixed, or drawn between a minimum and a
//! maximum) it picks one of its [`Kill`]s and a target task (or the checkpoint coordinator, or
//! the job's supervisor). The monkey runs in the job's root, above the supervisor, so that
//! killing the supervisor does not kill the monkey.
//! A kill is a panic inside the task's user code, a stop of the actor from outside (its future
//! is aborted, as if its thread died), or a panic armed for a named [`Moment`] of the
//! checkpoint protocol, which fires the next time any task (or the coordinator) reaches it.
//! Every kill is logged with the seed and listed as a [`JobEvent::ChaosKill`](crate::runtime::JobEvent).
//! Kills count against the restart budgets like real failures: a long chaos run needs budgets
//! to match ([`JobConfig::restart`](crate::JobConfig::restart) for tasks,
//! [`coordinator_restart`](crate::JobConfig::coordinator_restart),
//! [`supervisor_restart`](crate::JobConfig::supervisor_restart)).
//!
//! Reproducibility: the schedule and every choice are functions of the seed. With
//! [`JobConfig::deterministic`](crate::JobConfig) (one thread, no background I/O) and tokio's
//! clock paused, a seed yields the same sequence of events run after run.
//! [`first_divergent_seed`] runs a job under many seeds and reports the first whose output
//! differs from a failure-free run.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::Result;

/// A point of the checkpoint protocol where an armed kill fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Moment {
    /// A task with several inputs has blocked a channel and waits for the other barriers.
    DuringAlignment,
    /// A task has captured its state and forwarded the barrier, but not acked yet.
    AfterCaptureBeforeAck,
    /// A sink has pre-committed an epoch and is about to commit it.
    BetweenPreCommitAndCommit,
    /// The coordinator has started writing a manifest.
    CoordinatorManifestWrite,
}

/// One kind of kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kill {
    /// A panic inside the target task's user code.
    PanicInUserCode,
    /// The target task's actor is stopped from outside (its future aborted).
    StopFromOutside,
    /// The checkpoint coordinator is stopped from outside.
    Coordinator,
    /// The job's supervisor (the job master) is stopped from outside: its parent restarts it,
    /// and the new supervisor restores the whole job from the latest complete checkpoint.
    /// Not in [`ChaosMonkey::new`]'s list (each such kill restarts every task, and counts
    /// against [`JobConfig::supervisor_restart`](crate::JobConfig::supervisor_restart)): add it
    /// with [`ChaosMonkey::kills`].
    JobSupervisor,
    /// An application actor hosted by a sink task ([`ActorParticipant`](crate::sink::ActorParticipant))
    /// is stopped: its sink task fails and its region restores it from its last snapshot.
    /// Targets sink tasks only (a sink hosting nothing ignores it); not in
    /// [`ChaosMonkey::new`]'s list.
    ApplicationActor,
    /// A panic armed for the next time the moment is reached.
    At(Moment),
}

/// A seeded kill schedule for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosMonkey {
    /// The seed every choice derives from.
    pub seed: u64,
    /// Time between kills: drawn uniformly from `[min, max]` (equal bounds: a fixed interval).
    pub interval: (Duration, Duration),
    /// The kinds of kill to choose from (uniformly).
    pub kills: Vec<Kill>,
    /// Only tasks of these vertices are targets (all tasks when empty).
    pub vertices: Vec<String>,
    /// Stop killing after this many kills.
    pub max_kills: Option<u32>,
}

impl ChaosMonkey {
    /// A monkey killing every 100 to 200 ms with every kind of kill.
    pub fn new(seed: u64) -> ChaosMonkey {
        ChaosMonkey {
            seed,
            interval: (Duration::from_millis(100), Duration::from_millis(200)),
            kills: vec![
                Kill::PanicInUserCode,
                Kill::StopFromOutside,
                Kill::Coordinator,
                Kill::At(Moment::DuringAlignment),
                Kill::At(Moment::AfterCaptureBeforeAck),
                Kill::At(Moment::BetweenPreCommitAndCommit),
                Kill::At(Moment::CoordinatorManifestWrite),
            ],
            vertices: Vec::new(),
            max_kills: None,
        }
    }

    /// Kills at a fixed interval.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = (interval, interval);
        self
    }

    /// Kills at intervals drawn between `min` and `max`.
    pub fn random_interval(mut self, min: Duration, max: Duration) -> Self {
        self.interval = (min.min(max), max.max(min));
        self
    }

    /// Chooses among these kinds of kill only.
    pub fn kills(mut self, kills: Vec<Kill>) -> Self {
        self.kills = kills;
        self
    }

    /// Targets only the tasks of these vertices.
    pub fn only_vertices(mut self, vertices: &[&str]) -> Self {
        self.vertices = vertices.iter().map(|v| v.to_string()).collect();
        self
    }

    /// Stops after `n` kills.
    pub fn max_kills(mut self, n: u32) -> Self {
        self.max_kills = Some(n);
        self
    }
}

/// The monkey's seeded choices, driven by the job root.
#[derive(Debug)]
pub(crate) struct MonkeyState {
    pub(crate) config: ChaosMonkey,
    rng: u64,
    pub(crate) kills: u32,
    pub(crate) next_after: Duration,
}

impl MonkeyState {
    pub(crate) fn new(config: ChaosMonkey) -> MonkeyState {
        let mut s = MonkeyState {
            rng: config.seed ^ 0xC4A0_5EED,
            config,
            kills: 0,
            next_after: Duration::ZERO,
        };
        s.next_after = s.draw_interval();
        s
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn draw_interval(&mut self) -> Duration {
        let (min, max) = self.config.interval;
        let span = max.saturating_sub(min).as_micros() as u64;
        let extra = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        min + Duration::from_micros(extra)
    }

    /// The next kill to carry out, if the monkey may kill again.
    pub(crate) fn next_kill(&mut self) -> Option<Kill> {
        if self.config.kills.is_empty() || self.config.max_kills.is_some_and(|m| self.kills >= m) {
            return None;
        }
        let i = (self.next_u64() % self.config.kills.len() as u64) as usize;
        self.kills += 1;
        Some(self.config.kills[i])
    }
}

/// Kills armed for a moment, shared by the job's actors.
#[derive(Debug, Default)]
pub(crate) struct ChaosHooks {
    armed: Mutex<Option<(Moment, u32)>>,
}

impl ChaosHooks {
    /// Arms `moment` for kill number `kill` (replacing any armed kill that has not fired).
    pub(crate) fn arm(&self, moment: Moment, kill: u32) {
        if let Ok(mut a) = self.armed.lock() {
            *a = Some((moment, kill));
        }
    }

    /// Takes the armed kill if it is for `moment`.
    pub(crate) fn fire(&self, moment: Moment) -> Option<u32> {
        let mut a = self.armed.lock().ok()?;
        match *a {
            Some((m, kill)) if m == moment => {
                *a = None;
                Some(kill)
            }
            _ => None,
        }
    }
}

/// Installs a panic hook that stays silent for the panics a chaos monkey injects (their
/// messages start with "chaos kill") and hands every other panic to the hook that was installed
/// before. The panics are still contained and reported as task failures; this only keeps them
/// off stderr.
pub fn quiet_chaos_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !message.starts_with("chaos kill") {
            previous(info);
        }
    }));
}

/// The first seed under which a job's output differed from its failure-free output.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence<O> {
    /// The seed.
    pub seed: u64,
    /// The failure-free output.
    pub expected: O,
    /// The output under that seed.
    pub actual: O,
}

/// Runs `run(None)` (no chaos) once, then `run(Some(seed))` for every seed in `seeds`, and
/// returns the first seed whose output differs, or `None` when every seed matched. `run`
/// builds and runs the job (attaching a [`ChaosMonkey`] for `Some(seed)`) and returns its
/// committed output in a comparable form. An error from a run ends the search with it.
pub fn first_divergent_seed<O: PartialEq + Debug>(
    seeds: Range<u64>,
    mut run: impl FnMut(Option<u64>) -> Result<O>,
) -> Result<Option<Divergence<O>>> {
    let expected = run(None)?;
    for seed in seeds {
        let actual = run(Some(seed))?;
        if actual != expected {
            tracing::warn!(seed, "chaos run's output differs from the failure-free run");
            return Ok(Some(Divergence {
                seed,
                expected,
                actual,
            }));
        }
    }
    Ok(None)
}
