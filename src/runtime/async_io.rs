//! Async work from operators, in the manner of Flink's async I/O: an [`AsyncFunction`] starts a
//! future per record (ask an application actor with `send`, call a service) and its output
//! enters the stream when the future resolves.
//!
//! `Stream::async_map(name, f, AsyncOptions)` runs it:
//! - at most [`AsyncOptions::capacity`] calls are in flight per task; when they all are, the
//!   task stops reading its inputs (backpressure) until one resolves. Other records keep flowing
//!   while calls are pending, as long as there is room.
//! - [`AsyncMode::Ordered`] emits results in input order; [`AsyncMode::Unordered`] as they
//!   resolve (never across a barrier: a barrier is forwarded after everything emitted before).
//! - a call that does not resolve within [`AsyncOptions::timeout`], or fails, is tried again up
//!   to [`AsyncOptions::retries`] times, [`AsyncOptions::retry_delay`] apart; after the last try
//!   a timeout calls [`AsyncFunction::timeout`] (by default an error) and a failure fails the
//!   task (a restart, from the last checkpoint).
//!
//! Exactly-once: at a barrier, the inputs of the calls still in flight (and of those waiting
//! for room) are part of the task's snapshot, in order; after a restore they are issued again
//! before any new input. Their results enter state and output through the task, so they count
//! exactly once there. Their *external* side effects are at-least-once: a call issued again
//! after a restore reaches the service again.
//!
//! Watermarks wait for the calls before them: a watermark that arrives while calls are in flight
//! leaves the operator once every call issued before it has emitted, so a result is never late
//! downstream because of the operator (in unordered mode too: as in Flink, the watermark is an
//! ordering point).

use std::time::Duration;

use futures::future::LocalBoxFuture;

use crate::error::{Error, Result};

/// The order in which an async operator emits results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncMode {
    /// In the order of the inputs (a slow call holds back the results after it).
    Ordered,
    /// As the calls resolve.
    Unordered,
}

/// How an async operator runs its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncOptions {
    /// Ordered or unordered results.
    pub mode: AsyncMode,
    /// Calls in flight per task at most (at least 1).
    pub capacity: usize,
    /// How long one try may take.
    pub timeout: Duration,
    /// How many times a failed or timed-out call is tried again.
    pub retries: u32,
    /// The pause before trying again.
    pub retry_delay: Duration,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions {
            mode: AsyncMode::Ordered,
            capacity: 100,
            timeout: Duration::from_secs(10),
            retries: 0,
            retry_delay: Duration::from_millis(10),
        }
    }
}

impl AsyncOptions {
    /// Options with `mode` and `capacity`, the rest default.
    pub fn new(mode: AsyncMode, capacity: usize) -> Self {
        AsyncOptions {
            mode,
            capacity,
            ..AsyncOptions::default()
        }
    }

    /// Sets the timeout of one try.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Tries a failed or timed-out call again up to `retries` times, `delay` apart.
    pub fn retries(mut self, retries: u32, delay: Duration) -> Self {
        self.retries = retries;
        self.retry_delay = delay;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::Config("async capacity must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(Error::Config("async timeout must be above zero".into()));
        }
        Ok(())
    }
}

/// The function of an async operator: one call per input record, resolving to its outputs.
/// Cloned for every task. Calls run on the task's thread (an actix arbiter), so the future
/// need not be `Send`: `addr.send(msg)` to an application actor works as it is.
pub trait AsyncFunction<I, O>: Clone + Send + 'static {
    /// Starts the call for `input`. It may run more than once for one input: after a failure
    /// (retries) and after a restore.
    fn call(&self, input: &I) -> LocalBoxFuture<'static, Result<Vec<O>>>;

    /// What to emit for `input` when its last try timed out. The default fails the task with
    /// [`Error::Unavailable`].
    fn timeout(&self, _input: &I) -> Result<Vec<O>> {
        Err(Error::Unavailable {
            what: "an async call".into(),
            reason: "it timed out on every try".into(),
        })
    }
}
