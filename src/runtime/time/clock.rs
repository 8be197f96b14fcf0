//! The processing-time clock: what "now" means for processing-time timers.
//!
//! Processing time is wall-clock time in milliseconds since the Unix epoch, as in Flink, so it
//! means the same in every process: a processing-time timer stored in a checkpoint fires at the
//! same moment whichever process restores it (one already overdue fires once, at the first
//! tick after the restore).
//!
//! It is read through tokio's clock: the wall clock is read once per process, at the first
//! call, and the clock then advances with `tokio::time::Instant`, so a test that pauses tokio's
//! clock (`tokio::time::pause`, as the deterministic chaos runs do) controls processing time
//! too. Within a process it never goes backwards, whichever thread or runtime reads it (each
//! reading is clamped to the largest one given out before); a wall-clock step after the
//! process started is not followed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Timestamp;

/// The wall clock at the process's first reading, and tokio's clock at that moment.
static ORIGIN: OnceLock<(Timestamp, tokio::time::Instant)> = OnceLock::new();
/// The largest processing time given out so far.
static LAST: AtomicI64 = AtomicI64::new(Timestamp::MIN);

/// The wall clock now, in milliseconds since the Unix epoch (0 for a clock set before 1970).
fn wall_clock_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Timestamp::try_from(d.as_millis()).unwrap_or(Timestamp::MAX))
        .unwrap_or(0)
}

/// Processing time now: wall-clock milliseconds since the Unix epoch (see the module
/// documentation).
pub(crate) fn processing_time() -> Timestamp {
    let (wall, origin) = *ORIGIN.get_or_init(|| (wall_clock_ms(), tokio::time::Instant::now()));
    let elapsed = tokio::time::Instant::now().saturating_duration_since(origin);
    let now =
        wall.saturating_add(Timestamp::try_from(elapsed.as_millis()).unwrap_or(Timestamp::MAX));
    // Readings through runtimes whose clocks differ (one paused) never go backwards.
    let before = LAST.fetch_max(now, Ordering::Relaxed);
    now.max(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_time_is_wall_clock_epoch_milliseconds_and_never_goes_back() {
        let before = wall_clock_ms();
        let a = processing_time();
        let b = processing_time();
        let after = wall_clock_ms();
        assert!(b >= a, "{b} < {a}");
        // The origin may have been read by an earlier test of this process, so only a bound
        // that holds for the whole process: within a day of the wall clock.
        assert!(
            a > before - 86_400_000 && a <= after + 86_400_000,
            "{a} vs {before}..{after}"
        );
        assert!(a > 1_600_000_000_000, "{a} is not epoch milliseconds");
    }
}
