//! Barrier alignment for a task with several input channels: the pure protocol core.
//!
//! Protocol (design notes, section 2): on `Barrier(n)` from channel `c`, the task stops taking
//! records from `c` (they belong to epoch n+1) until `Barrier(n)` has arrived on every input
//! channel; records from the other channels are processed meanwhile. When the last barrier
//! arrives the task is *aligned*: it snapshots, forwards the barrier and unblocks every channel.
//!
//! [`Aligner`] holds only that bookkeeping. It is fed observed facts ("barrier n on channel c")
//! and answers with a [`BarrierOutcome`]; the task actor carries the decision out (gating the
//! channel, taking the snapshot). In [`CheckpointMode::AtLeastOnce`] no channel is ever blocked:
//! the snapshot is taken when the barrier has arrived on every channel, and may contain records
//! of the next epoch from the faster channels.
//!
//! **Invariants** (checked, since a violation means a protocol bug, never bad input):
//! barrier ids on one channel strictly increase; in exactly-once mode no channel delivers a
//! barrier while it is blocked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::CheckpointId;

/// How checkpoints treat tasks with several inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum CheckpointMode {
    /// Aligned barriers: a snapshot reflects exactly the records before the barrier on every
    /// channel. The default.
    #[default]
    ExactlyOnce,
    /// No alignment: channels are never blocked, so a snapshot may include records after the
    /// barrier on the faster channels, which are then replayed after a restore and counted
    /// twice. Lower latency under skew; results are at-least-once.
    AtLeastOnce,
}

/// What the task must do after a barrier arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierOutcome {
    /// Block the channel the barrier came from until alignment completes.
    BlockChannel,
    /// Keep reading the channel (at-least-once mode, or a barrier already counted).
    Continue,
    /// Every channel has delivered the barrier: snapshot, forward the barrier, unblock all.
    Aligned {
        /// The checkpoint to snapshot.
        checkpoint: CheckpointId,
        /// Time from the first barrier of this checkpoint to the last.
        alignment: Duration,
    },
}

/// Per-task barrier alignment state.
#[derive(Debug)]
pub struct Aligner {
    mode: CheckpointMode,
    /// The last barrier id seen on each channel.
    last_seen: Vec<Option<CheckpointId>>,
    /// Checkpoints with barriers seen on some channels: (channels seen, first arrival).
    pending: BTreeMap<CheckpointId, (usize, Instant)>,
    blocked: Vec<bool>,
}

impl Aligner {
    /// An aligner for `channels` input channels (a source has none: it never aligns).
    pub fn new(channels: usize, mode: CheckpointMode) -> Aligner {
        Aligner {
            mode,
            last_seen: vec![None; channels],
            pending: BTreeMap::new(),
            blocked: vec![false; channels],
        }
    }

    /// True when `channel` must not be read now.
    pub fn is_blocked(&self, channel: usize) -> bool {
        self.blocked[channel]
    }

    /// The channels currently blocked.
    pub fn blocked_channels(&self) -> impl Iterator<Item = usize> + '_ {
        self.blocked
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
    }

    /// Records that `Barrier(checkpoint)` arrived on `channel` at `now`.
    pub fn on_barrier(
        &mut self,
        channel: usize,
        checkpoint: CheckpointId,
        now: Instant,
    ) -> BarrierOutcome {
        self.on_barrier_in(channel, checkpoint, now, self.mode)
    }

    /// [`on_barrier`](Self::on_barrier) for a barrier that aligns in `mode` whatever the
    /// aligner's own: a savepoint's barrier aligns in [`CheckpointMode::ExactlyOnce`].
    pub fn on_barrier_in(
        &mut self,
        channel: usize,
        checkpoint: CheckpointId,
        now: Instant,
        mode: CheckpointMode,
    ) -> BarrierOutcome {
        assert!(
            !self.blocked[channel],
            "invariant: a blocked channel delivered barrier {checkpoint}"
        );
        if let Some(prev) = self.last_seen[channel] {
            assert!(
                checkpoint > prev,
                "invariant: barrier ids increase per channel (got {checkpoint} after {prev})"
            );
        }
        self.last_seen[channel] = Some(checkpoint);
        let channels = self.last_seen.len();
        // Checkpoints older than this one that never aligned can no longer align in order:
        // every channel that delivers `checkpoint` has passed them. Drop them once this aligns.
        let entry = self.pending.entry(checkpoint).or_insert((0, now));
        entry.0 += 1;
        if entry.0 == channels {
            let (_, first) = entry.to_owned();
            self.pending.retain(|id, _| *id > checkpoint);
            self.blocked.iter_mut().for_each(|b| *b = false);
            return BarrierOutcome::Aligned {
                checkpoint,
                alignment: now.saturating_duration_since(first),
            };
        }
        match mode {
            CheckpointMode::ExactlyOnce => {
                self.blocked[channel] = true;
                BarrierOutcome::BlockChannel
            }
            CheckpointMode::AtLeastOnce => BarrierOutcome::Continue,
        }
    }

    /// Forgets any alignment in progress and unblocks every channel (the task is being reset).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.blocked.iter_mut().for_each(|b| *b = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_blocks_each_channel_until_every_barrier_arrives() {
        let t = Instant::now();
        let mut a = Aligner::new(3, CheckpointMode::ExactlyOnce);
        assert_eq!(
            a.on_barrier(1, CheckpointId(1), t),
            BarrierOutcome::BlockChannel
        );
        assert!(a.is_blocked(1) && !a.is_blocked(0));
        assert_eq!(
            a.on_barrier(0, CheckpointId(1), t),
            BarrierOutcome::BlockChannel
        );
        let out = a.on_barrier(2, CheckpointId(1), t + Duration::from_millis(5));
        assert_eq!(
            out,
            BarrierOutcome::Aligned {
                checkpoint: CheckpointId(1),
                alignment: Duration::from_millis(5)
            }
        );
        assert_eq!(a.blocked_channels().count(), 0);
    }

    #[test]
    fn a_savepoint_barrier_aligns_even_in_at_least_once_mode() {
        let t = Instant::now();
        let mut a = Aligner::new(2, CheckpointMode::AtLeastOnce);
        assert_eq!(
            a.on_barrier_in(0, CheckpointId(1), t, CheckpointMode::ExactlyOnce),
            BarrierOutcome::BlockChannel
        );
        assert!(a.is_blocked(0), "the savepoint's channel waits");
        assert!(matches!(
            a.on_barrier_in(1, CheckpointId(1), t, CheckpointMode::ExactlyOnce),
            BarrierOutcome::Aligned { .. }
        ));
        assert!(!a.is_blocked(0));
        assert_eq!(
            a.on_barrier(0, CheckpointId(2), t),
            BarrierOutcome::Continue,
            "the next checkpoint's barrier does not block"
        );
    }

    #[test]
    fn a_single_channel_aligns_at_once() {
        let mut a = Aligner::new(1, CheckpointMode::ExactlyOnce);
        assert!(matches!(
            a.on_barrier(0, CheckpointId(7), Instant::now()),
            BarrierOutcome::Aligned { .. }
        ));
    }

    #[test]
    fn at_least_once_never_blocks_and_tracks_overlapping_checkpoints() {
        let t = Instant::now();
        let mut a = Aligner::new(2, CheckpointMode::AtLeastOnce);
        assert_eq!(
            a.on_barrier(0, CheckpointId(1), t),
            BarrierOutcome::Continue
        );
        assert_eq!(
            a.on_barrier(0, CheckpointId(2), t),
            BarrierOutcome::Continue
        );
        assert!(!a.is_blocked(0));
        assert!(matches!(
            a.on_barrier(1, CheckpointId(1), t),
            BarrierOutcome::Aligned {
                checkpoint: CheckpointId(1),
                ..
            }
        ));
        assert!(matches!(
            a.on_barrier(1, CheckpointId(2), t),
            BarrierOutcome::Aligned {
                checkpoint: CheckpointId(2),
                ..
            }
        ));
    }
}
