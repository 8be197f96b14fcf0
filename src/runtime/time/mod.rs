//! Event time: timestamps, watermarks, timers and windows.
//!
//! - A source with event time ([`LogSource::event_time`](crate::LogSource::event_time)) reads
//!   each record's timestamp (milliseconds) and tracks, per log partition, the largest seen; its
//!   watermark is the minimum over its active partitions of that maximum minus the
//!   [`WatermarkStrategy`]'s bound. It emits the watermark in-band (behind the records before it)
//!   at most every `watermark_interval`, marks itself idle when none of its partitions had data
//!   for the idle timeout, and emits the final watermark (`i64::MAX`) when a bounded input ends.
//!   Per-partition maxima are part of the source's checkpointed state, so a restored source
//!   resumes its watermark where the checkpoint left it.
//! - A task's watermark is the minimum over its input channels that are not idle
//!   (`InputWatermarks`); it never goes back. When it advances, keyed operators fire their
//!   event-time timers up to it in timestamp order, then the watermark goes downstream.
//! - Timers are keyed state (one sorted list of timestamps per key and time domain, checkpointed
//!   by key group), with an in-memory index by time rebuilt on restore (`TimerService`).
//! - Windows ([`WindowAssigner`]: tumbling, sliding, session) are keyed operators built on map
//!   state and event-time timers (`window.rs`, whose stream API, `KeyedStream::window`, is
//!   re-exported by the runtime).
//!
//! A module of the runtime: it imports only `error` and `state`, except `window.rs`, which
//! builds on the runtime's operator and stream types (and nothing here imports it back).
//! - Processing time (`clock`) is wall-clock milliseconds since the Unix epoch, read through
//!   tokio's clock and never going backwards within a process, so processing-time timers in a
//!   checkpoint mean the same in the process that restores them.

mod clock;
pub(crate) mod window;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::state::{KeyedStateBackend, StateKey, ValueState};

pub(crate) use clock::processing_time;

/// Event time in milliseconds.
pub type Timestamp = i64;

/// How a source derives its watermark from the timestamps it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkStrategy {
    /// Timestamps only grow: watermark = largest seen - 1.
    Monotonous,
    /// Records arrive at most this many milliseconds behind the largest timestamp seen:
    /// watermark = largest seen - bound - 1.
    BoundedOutOfOrderness(i64),
}

impl WatermarkStrategy {
    /// The watermark after seeing `max_seen` as the largest timestamp.
    pub fn watermark(&self, max_seen: Timestamp) -> Timestamp {
        if max_seen == Timestamp::MIN {
            return Timestamp::MIN;
        }
        match self {
            WatermarkStrategy::Monotonous => max_seen.saturating_sub(1),
            WatermarkStrategy::BoundedOutOfOrderness(b) => {
                max_seen.saturating_sub(*b).saturating_sub(1)
            }
        }
    }
}

/// A watermark status travelling on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatermarkStatus {
    /// No record with a smaller or equal timestamp will follow on this channel.
    At(Timestamp),
    /// The channel has no data for now: it must not hold the others back.
    Idle,
}

/// What a change on one input did to the task's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatermarkChange {
    Unchanged,
    Advanced(Timestamp),
    /// Every input is idle: the watermark moved to the largest any input had reached (as far as
    /// they all promised), and the task is idle.
    BecameIdle(Option<Timestamp>),
}

/// The minimum-watermark rule over a task's input channels.
#[derive(Debug, Clone)]
pub(crate) struct InputWatermarks {
    channels: Vec<(Timestamp, bool)>,
    current: Timestamp,
    idle: bool,
}

impl InputWatermarks {
    /// `channels` inputs, every one at `i64::MIN` and active.
    pub(crate) fn new(channels: usize) -> Self {
        InputWatermarks {
            channels: vec![(Timestamp::MIN, false); channels],
            current: Timestamp::MIN,
            idle: false,
        }
    }

    /// The task's watermark.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Timestamp {
        self.current
    }

    fn recompute(&mut self) -> WatermarkChange {
        let active = self
            .channels
            .iter()
            .filter(|(_, idle)| !idle)
            .map(|(w, _)| *w)
            .min();
        match active {
            None => {
                if self.idle || self.channels.is_empty() {
                    WatermarkChange::Unchanged
                } else {
                    self.idle = true;
                    let max = self
                        .channels
                        .iter()
                        .map(|(w, _)| *w)
                        .max()
                        .unwrap_or(Timestamp::MIN);
                    if max > self.current {
                        self.current = max;
                        WatermarkChange::BecameIdle(Some(max))
                    } else {
                        WatermarkChange::BecameIdle(None)
                    }
                }
            }
            Some(w) => {
                self.idle = false;
                if w > self.current {
                    self.current = w;
                    WatermarkChange::Advanced(w)
                } else {
                    WatermarkChange::Unchanged
                }
            }
        }
    }

    /// A watermark status arrived on `channel`.
    pub(crate) fn on_status(&mut self, channel: usize, status: WatermarkStatus) -> WatermarkChange {
        match status {
            WatermarkStatus::At(w) => {
                let c = &mut self.channels[channel];
                c.0 = c.0.max(w);
                c.1 = false;
            }
            WatermarkStatus::Idle => self.channels[channel].1 = true,
        }
        self.recompute()
    }

    /// A record arrived on `channel`: an idle channel is active again (its watermark stays
    /// where it was; the task's never goes back).
    pub(crate) fn on_record(&mut self, channel: usize) {
        self.channels[channel].1 = false;
    }

    /// `channel` ended: it holds nothing back any more.
    pub(crate) fn on_end(&mut self, channel: usize) -> WatermarkChange {
        self.on_status(channel, WatermarkStatus::At(Timestamp::MAX))
    }
}

/// A time window `[start, end)` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// The first millisecond in the window.
    pub start: Timestamp,
    /// The first millisecond after the window.
    pub end: Timestamp,
}

impl Window {
    /// The last millisecond in the window: its results are due when the watermark reaches it.
    pub fn max_timestamp(&self) -> Timestamp {
        self.end - 1
    }

    /// True when the windows overlap or touch (session windows merge then).
    pub fn touches(&self, other: &Window) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &Window) -> Window {
        Window {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// Which windows a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed, non-overlapping windows of `size` ms aligned on multiples of `size`.
    Tumbling {
        /// The window length in ms.
        size: i64,
    },
    /// Windows of `size` ms starting every `slide` ms; a record is in `size / slide` windows.
    Sliding {
        /// The window length in ms.
        size: i64,
        /// The distance between window starts in ms.
        slide: i64,
    },
    /// A window per burst of activity: a record opens `[t, t + gap)`, and windows of one key
    /// that touch merge.
    Session {
        /// The inactivity gap in ms.
        gap: i64,
    },
}

impl WindowAssigner {
    /// Checks the sizes.
    pub(crate) fn validate(&self) -> Result<()> {
        let ok = match *self {
            WindowAssigner::Tumbling { size } => size > 0,
            WindowAssigner::Sliding { size, slide } => size > 0 && slide > 0,
            WindowAssigner::Session { gap } => gap > 0,
        };
        if ok {
            Ok(())
        } else {
            Err(crate::Error::Config(format!(
                "window sizes must be positive: {self:?}"
            )))
        }
    }

    /// The windows of a record with timestamp `ts`.
    pub fn assign(&self, ts: Timestamp) -> Vec<Window> {
        match *self {
            WindowAssigner::Tumbling { size } => {
                let start = ts - ts.rem_euclid(size);
                vec![Window {
                    start,
                    end: start + size,
                }]
            }
            WindowAssigner::Sliding { size, slide } => {
                let last = ts - ts.rem_euclid(slide);
                let mut out = Vec::new();
                let mut start = last;
                while start > ts - size {
                    out.push(Window {
                        start,
                        end: start + size,
                    });
                    start -= slide;
                }
                out
            }
            WindowAssigner::Session { gap } => vec![Window {
                start: ts,
                end: ts + gap,
            }],
        }
    }

    /// True for session windows, which merge.
    pub fn merges(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeDomain {
    /// Fires when the watermark reaches it.
    EventTime,
    /// Fires when the task's processing-time clock reaches it.
    ProcessingTime,
}

const EVENT_TIMERS: &str = "snapflow.timers.event";
const PROCESSING_TIMERS: &str = "snapflow.timers.processing";

/// The backend's current key, which a timer is registered or deleted for.
fn current_key<K: StateKey>(state: &KeyedStateBackend<K>) -> Result<K> {
    state
        .current_key()
        .cloned()
        .ok_or_else(|| crate::Error::NoCurrentKey {
            name: "timers".into(),
        })
}

/// A keyed task's timers: per key and domain a sorted list of timestamps in keyed state (so
/// they are checkpointed and restored by key group), plus an index by time for firing.
#[derive(Debug)]
pub(crate) struct TimerService<K: StateKey> {
    event: ValueState<Vec<Timestamp>>,
    processing: ValueState<Vec<Timestamp>>,
    event_index: BTreeMap<Timestamp, Vec<K>>,
    processing_index: BTreeMap<Timestamp, Vec<K>>,
}

impl<K: StateKey> TimerService<K> {
    /// Registers the timer states and rebuilds the index from what was restored.
    pub(crate) fn open(state: &mut KeyedStateBackend<K>) -> Result<Self> {
        let event = state.value_state::<Vec<Timestamp>>(EVENT_TIMERS)?;
        let processing = state.value_state::<Vec<Timestamp>>(PROCESSING_TIMERS)?;
        let mut service = TimerService {
            event,
            processing,
            event_index: BTreeMap::new(),
            processing_index: BTreeMap::new(),
        };
        for (k, ts) in service.event.entries(state)? {
            for t in ts {
                service.event_index.entry(*t).or_default().push(k.clone());
            }
        }
        for (k, ts) in service.processing.entries(state)? {
            for t in ts {
                service
                    .processing_index
                    .entry(*t)
                    .or_default()
                    .push(k.clone());
            }
        }
        Ok(service)
    }

    fn parts(
        &mut self,
        domain: TimeDomain,
    ) -> (
        &ValueState<Vec<Timestamp>>,
        &mut BTreeMap<Timestamp, Vec<K>>,
    ) {
        match domain {
            TimeDomain::EventTime => (&self.event, &mut self.event_index),
            TimeDomain::ProcessingTime => (&self.processing, &mut self.processing_index),
        }
    }

    /// Registers a timer at `ts` for the current key (once: registering it again does nothing).
    pub(crate) fn register(
        &mut self,
        state: &mut KeyedStateBackend<K>,
        domain: TimeDomain,
        ts: Timestamp,
    ) -> Result<()> {
        let key = current_key(state)?;
        let (list, index) = self.parts(domain);
        let timers = list.get_or_insert_with(state, Vec::new)?;
        if let Err(pos) = timers.binary_search(&ts) {
            timers.insert(pos, ts);
            index.entry(ts).or_default().push(key);
        }
        Ok(())
    }

    /// Deletes the current key's timer at `ts`, if there is one.
    pub(crate) fn delete(
        &mut self,
        state: &mut KeyedStateBackend<K>,
        domain: TimeDomain,
        ts: Timestamp,
    ) -> Result<()> {
        let key = current_key(state)?;
        let (list, index) = self.parts(domain);
        let Some(timers) = list.get_mut(state)? else {
            return Ok(());
        };
        if let Ok(pos) = timers.binary_search(&ts) {
            timers.remove(pos);
            if timers.is_empty() {
                list.clear(state)?;
            }
            if let Some(keys) = index.get_mut(&ts) {
                keys.retain(|k| k != &key);
                if keys.is_empty() {
                    index.remove(&ts);
                }
            }
        }
        Ok(())
    }

    /// Takes the earliest due timer (at or before `up_to`): sets its key as the current key,
    /// removes it from state, and returns its timestamp.
    pub(crate) fn pop_due(
        &mut self,
        state: &mut KeyedStateBackend<K>,
        domain: TimeDomain,
        up_to: Timestamp,
    ) -> Result<Option<Timestamp>> {
        let (list, index) = self.parts(domain);
        let Some(mut entry) = index.first_entry() else {
            return Ok(None);
        };
        let ts = *entry.key();
        if ts > up_to {
            return Ok(None);
        }
        let key = entry.get_mut().remove(0);
        if entry.get().is_empty() {
            entry.remove();
        }
        state.set_current_key(key)?;
        if let Some(timers) = list.get_mut(state)? {
            if let Ok(pos) = timers.binary_search(&ts) {
                timers.remove(pos);
            }
            if timers.is_empty() {
                list.clear(state)?;
            }
        }
        Ok(Some(ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::KeyGroupRange;

    #[test]
    fn the_watermark_is_the_minimum_over_active_inputs_and_never_goes_back() {
        let mut w = InputWatermarks::new(2);
        assert_eq!(
            w.on_status(0, WatermarkStatus::At(10)),
            WatermarkChange::Unchanged,
            "input 1 holds it at MIN"
        );
        assert_eq!(
            w.on_status(1, WatermarkStatus::At(5)),
            WatermarkChange::Advanced(5)
        );
        assert_eq!(
            w.on_status(1, WatermarkStatus::Idle),
            WatermarkChange::Advanced(10),
            "an idle input holds nothing back"
        );
        assert_eq!(
            w.on_status(0, WatermarkStatus::Idle),
            WatermarkChange::BecameIdle(None)
        );
        w.on_record(1);
        assert_eq!(
            w.on_status(1, WatermarkStatus::At(7)),
            WatermarkChange::Unchanged,
            "never back from 10"
        );
        assert_eq!(w.current(), 10);
        // Input 0 is idle: once input 1 ends, nothing holds the watermark back.
        assert_eq!(w.on_end(1), WatermarkChange::Advanced(Timestamp::MAX));
        assert_eq!(w.on_end(0), WatermarkChange::Unchanged);
    }

    #[test]
    fn when_every_input_is_idle_the_watermark_moves_to_the_largest_reached() {
        let mut w = InputWatermarks::new(2);
        w.on_status(0, WatermarkStatus::At(100));
        w.on_status(1, WatermarkStatus::At(30));
        assert_eq!(
            w.on_status(0, WatermarkStatus::Idle),
            WatermarkChange::Unchanged,
            "input 1 still holds it at 30"
        );
        assert_eq!(
            w.on_status(1, WatermarkStatus::Idle),
            WatermarkChange::BecameIdle(Some(100))
        );
    }

    #[test]
    fn assigners_cover_each_timestamp_with_the_right_windows() {
        let t = WindowAssigner::Tumbling { size: 10 };
        assert_eq!(t.assign(25), vec![Window { start: 20, end: 30 }]);
        assert_eq!(t.assign(-1), vec![Window { start: -10, end: 0 }]);
        let s = WindowAssigner::Sliding { size: 10, slide: 5 };
        assert_eq!(
            s.assign(12),
            vec![Window { start: 10, end: 20 }, Window { start: 5, end: 15 }]
        );
        for ts in -20..40 {
            for w in s.assign(ts) {
                assert!(w.start <= ts && ts < w.end);
            }
            assert_eq!(s.assign(ts).len(), 2);
        }
        assert_eq!(
            WindowAssigner::Session { gap: 3 }.assign(7),
            vec![Window { start: 7, end: 10 }]
        );
        assert!(Window { start: 0, end: 5 }.touches(&Window { start: 5, end: 9 }));
        assert!(!Window { start: 0, end: 5 }.touches(&Window { start: 6, end: 9 }));
    }

    #[test]
    fn timers_fire_in_timestamp_order_once_and_survive_a_snapshot() {
        let range = KeyGroupRange::all(128).expect("range");
        let mut b = KeyedStateBackend::<u64>::new(range, 128).expect("backend");
        let mut t = TimerService::open(&mut b).expect("open");
        for (k, ts) in [(1u64, 30), (2, 10), (1, 20), (3, 10), (1, 30)] {
            b.set_current_key(k).expect("key");
            t.register(&mut b, TimeDomain::EventTime, ts)
                .expect("register");
        }
        b.set_current_key(3).expect("key");
        t.delete(&mut b, TimeDomain::EventTime, 10).expect("delete");
        let snap = b.snapshot().expect("snapshot");
        let mut fired = Vec::new();
        while let Some(ts) = t.pop_due(&mut b, TimeDomain::EventTime, 25).expect("pop") {
            fired.push((*b.current_key().expect("key"), ts));
        }
        assert_eq!(fired, vec![(2, 10), (1, 20)]);
        // Restore the snapshot taken before firing: the same timers come back.
        let mut r = KeyedStateBackend::<u64>::new(range, 128).expect("backend");
        r.restore([&snap]).expect("restore");
        let mut t2 = TimerService::open(&mut r).expect("open");
        let mut all = Vec::new();
        while let Some(ts) = t2
            .pop_due(&mut r, TimeDomain::EventTime, i64::MAX)
            .expect("pop")
        {
            all.push((*r.current_key().expect("key"), ts));
        }
        assert_eq!(all, vec![(2, 10), (1, 20), (1, 30)]);
    }
}
