//! Restart strategies: after a failure, restart (after how long) or give up. Pure decisions:
//! time is a parameter, jitter comes from a seeded generator.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do when a task fails.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never restart: the first failure ends the job.
    Never,
    /// Restart after `delay`, at most `max_attempts` times over the life of the job.
    FixedDelay {
        /// Wait this long before restarting.
        delay: Duration,
        /// Give up at the failure after this many restarts.
        max_attempts: u32,
    },
    /// Restart after a delay that starts at `initial` and is multiplied by `multiplier` after
    /// every failure, up to `max`, with up to `jitter` (a fraction, 0.0 to 1.0) of it added
    /// or taken at random. After `reset_after` without a failure the delay starts over. Gives up
    /// after `max_attempts` restarts (`u32::MAX`: never).
    ExponentialBackoff {
        /// The first delay.
        initial: Duration,
        /// The largest delay.
        max: Duration,
        /// The growth factor per failure (at least 1.0).
        multiplier: f64,
        /// The random fraction added or taken (0.0 to 1.0).
        jitter: f64,
        /// A quiet period that resets the delay to `initial`.
        reset_after: Duration,
        /// Give up at the failure after this many restarts.
        max_attempts: u32,
    },
    /// Restart after `delay` unless there were more than `max_failures` failures in the last
    /// `window`, then give up.
    FailureRate {
        /// Failures tolerated within the window.
        max_failures: u32,
        /// The sliding window.
        window: Duration,
        /// Wait this long before restarting.
        delay: Duration,
    },
}

impl Default for RestartStrategy {
    /// At most 10 failures a minute, restarting after 50 ms: tolerant of sporadic failures,
    /// and quick to give up on a record that fails every time.
    fn default() -> Self {
        RestartStrategy::FailureRate {
            max_failures: 10,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(50),
        }
    }
}

/// A strategy's answer to one failure.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    /// Restart after `delay`; this is restart number `attempt` (from 1).
    Restart {
        /// How long to wait first.
        delay: Duration,
        /// The restart's number.
        attempt: u32,
    },
    /// Stop restarting; the job ends with the failure.
    GiveUp {
        /// Why, in words ("10 restarts allowed, all used").
        reason: String,
    },
}

/// Applies a [`RestartStrategy`] to a job's failures over time.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    failures: VecDeque<Instant>,
    last_failure: Option<Instant>,
    backoff: Duration,
    rng: u64,
}

impl RestartTracker {
    /// A tracker for `strategy`; `seed` drives the jitter.
    pub fn new(strategy: RestartStrategy, seed: u64) -> Self {
        let backoff = match &strategy {
            RestartStrategy::ExponentialBackoff { initial, .. } => *initial,
            _ => Duration::ZERO,
        };
        RestartTracker {
            strategy,
            restarts: 0,
            failures: VecDeque::new(),
            last_failure: None,
            backoff,
            rng: seed,
        }
    }

    /// Restarts decided so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    fn random_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Decides what to do about a failure at `now`.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        let previous = self.last_failure.replace(now);
        let decision = match self.strategy.clone() {
            RestartStrategy::Never => RestartDecision::GiveUp {
                reason: "the restart strategy is Never".into(),
            },
            RestartStrategy::FixedDelay {
                delay,
                max_attempts,
            } => {
                if self.restarts >= max_attempts {
                    RestartDecision::GiveUp {
                        reason: format!("{max_attempts} restarts allowed, all used"),
                    }
                } else {
                    RestartDecision::Restart {
                        delay,
                        attempt: self.restarts + 1,
                    }
                }
            }
            RestartStrategy::ExponentialBackoff {
                initial,
                max,
                multiplier,
                jitter,
                reset_after,
                max_attempts,
            } => {
                if self.restarts >= max_attempts {
                    return RestartDecision::GiveUp {
                        reason: format!("{max_attempts} restarts allowed, all used"),
                    };
                }
                if previous.is_some_and(|p| now.saturating_duration_since(p) >= reset_after) {
                    self.backoff = initial;
                }
                let base = self.backoff.min(max);
                let j = jitter.clamp(0.0, 1.0);
                let factor = 1.0 + j * (2.0 * self.random_unit() - 1.0);
                let delay = base.mul_f64(factor.max(0.0)).min(max);
                self.backoff = base.mul_f64(multiplier.max(1.0)).min(max);
                RestartDecision::Restart {
                    delay,
                    attempt: self.restarts + 1,
                }
            }
            RestartStrategy::FailureRate {
                max_failures,
                window,
                delay,
            } => {
                self.failures.push_back(now);
                while self
                    .failures
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > window)
                {
                    self.failures.pop_front();
                }
                if self.failures.len() as u32 > max_failures {
                    RestartDecision::GiveUp {
                        reason: format!(
                            "{} failures within {window:?}, more than the {max_failures} allowed",
                            self.failures.len()
                        ),
                    }
                } else {
                    RestartDecision::Restart {
                        delay,
                        attempt: self.restarts + 1,
                    }
                }
            }
        };
        if let RestartDecision::Restart { .. } = decision {
            self.restarts += 1;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fixed_delay_gives_up_after_max_attempts() {
        let t = Instant::now();
        let mut r = RestartTracker::new(
            RestartStrategy::FixedDelay {
                delay: 5 * MS,
                max_attempts: 2,
            },
            1,
        );
        assert_eq!(
            r.on_failure(t),
            RestartDecision::Restart {
                delay: 5 * MS,
                attempt: 1
            }
        );
        assert_eq!(
            r.on_failure(t),
            RestartDecision::Restart {
                delay: 5 * MS,
                attempt: 2
            }
        );
        assert!(matches!(r.on_failure(t), RestartDecision::GiveUp { .. }));
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets_after_a_quiet_period() {
        let t = Instant::now();
        let s = RestartStrategy::ExponentialBackoff {
            initial: 10 * MS,
            max: 40 * MS,
            multiplier: 2.0,
            jitter: 0.0,
            reset_after: 1000 * MS,
            max_attempts: u32::MAX,
        };
        let mut r = RestartTracker::new(s, 1);
        let delays: Vec<Duration> = (0..4)
            .map(|i| match r.on_failure(t + i * MS) {
                RestartDecision::Restart { delay, .. } => delay,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, vec![10 * MS, 20 * MS, 40 * MS, 40 * MS]);
        assert_eq!(
            r.on_failure(t + 2000 * MS),
            RestartDecision::Restart {
                delay: 10 * MS,
                attempt: 5
            }
        );
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let t = Instant::now();
        let s = RestartStrategy::ExponentialBackoff {
            initial: 100 * MS,
            max: 100 * MS,
            multiplier: 1.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
            max_attempts: u32::MAX,
        };
        let mut r = RestartTracker::new(s, 7);
        for _ in 0..100 {
            let RestartDecision::Restart { delay, .. } = r.on_failure(t) else {
                panic!("gave up")
            };
            assert!(delay >= 80 * MS && delay <= 100 * MS, "{delay:?}");
        }
    }

    #[test]
    fn failure_rate_gives_up_only_when_the_window_holds_too_many() {
        let t = Instant::now();
        let s = RestartStrategy::FailureRate {
            max_failures: 2,
            window: 100 * MS,
            delay: MS,
        };
        let mut r = RestartTracker::new(s, 1);
        assert!(matches!(r.on_failure(t), RestartDecision::Restart { .. }));
        assert!(matches!(
            r.on_failure(t + 10 * MS),
            RestartDecision::Restart { .. }
        ));
        assert!(
            matches!(r.on_failure(t + 200 * MS), RestartDecision::Restart { .. }),
            "old failures left the window"
        );
        assert!(matches!(
            r.on_failure(t + 210 * MS),
            RestartDecision::Restart { .. }
        ));
        assert!(matches!(
            r.on_failure(t + 220 * MS),
            RestartDecision::GiveUp { .. }
        ));
    }
}
