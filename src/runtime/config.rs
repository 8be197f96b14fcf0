//! Job configuration.

use std::time::Duration;

use crate::checkpoint::{CheckpointMode, CheckpointTiming};
use crate::error::{Error, Result};
use crate::state::{DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM};
use crate::supervision::RestartStrategy;

/// Where a job's task actors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Every actor on the arbiter that starts the job: one thread. Deterministic scheduling
    /// for a given input, at the cost of using one core.
    Current,
    /// Task actors spread round-robin over this many new arbiters (threads); the job master
    /// stays on the arbiter that starts the job. The job's tasks, numbered vertex by vertex,
    /// go to arbiter `number % n`: when every vertex's parallelism is a multiple of `n`, task
    /// `i` of every vertex is on arbiter `i % n` (a forward pipeline slice stays on one
    /// thread); otherwise the tasks still spread over the threads (a job of parallelism 1 with
    /// at least `n` vertices uses all `n`), and a forward slice may cross threads.
    Arbiters(usize),
}

/// What a job starts from ([`JobConfig::start_from`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Empty state, every source at its start position (the beginning of its log). Restarts
    /// during the run restore only checkpoints the run itself completed.
    Nothing,
    /// The newest complete checkpoint or savepoint in the job's checkpoint storage that
    /// verifies (the default); nothing when there is none.
    #[default]
    Latest,
    /// Checkpoint (or savepoint) `id` of the job's checkpoint storage. It must exist and
    /// verify: no fallback to another one.
    Checkpoint(crate::checkpoint::CheckpointId),
    /// The savepoint (or checkpoint) at this location, as
    /// [`JobHandle::savepoint`](crate::JobHandle::savepoint) returned it: a directory for a
    /// [`LocalCheckpointStorage`](crate::LocalCheckpointStorage), which may have been copied
    /// anywhere, and may come from a job of another name. It must exist and verify.
    Savepoint(String),
}

/// What a restore does when the checkpoint storage holds checkpoints but none of them verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoValidCheckpoint {
    /// Fail with [`Error::NoValidCheckpoint`], naming every checkpoint and why it was rejected
    /// (the default): starting over would replay the log from its beginning, and an
    /// exactly-once sink would commit output that is already committed a second time.
    #[default]
    Fail,
    /// Start from the beginning of the log with empty state, as if there were no checkpoint.
    /// Choose this only where repeating committed output is acceptable.
    StartOver,
}

/// Settings of a job. `JobConfig::default()` suits most jobs.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Parallelism of vertices that do not set their own.
    pub parallelism: u32,
    /// Number of key groups of keyed vertices; fixed for the life of the job's checkpoints.
    pub max_parallelism: u32,
    /// Checkpoint interval, timeout and minimum pause.
    pub checkpoints: CheckpointTiming,
    /// Aligned (exactly-once, the default) or unaligned (at-least-once) checkpoints.
    pub mode: CheckpointMode,
    /// Records per batch on a channel.
    pub batch_size: usize,
    /// How long a partly filled batch may wait for more records before it is sent. Zero sends
    /// partial batches at the end of every input batch.
    pub linger: Duration,
    /// Batches a channel holds before its sender waits (backpressure). The records in flight
    /// on a channel are at most `channel_capacity * batch_size`.
    pub channel_capacity: usize,
    /// Thread placement.
    pub threads: Threads,
    /// How long an unbounded source waits before polling a log that had nothing new.
    pub source_idle_poll: Duration,
    /// What the job starts from: nothing, the latest checkpoint (the default), a checkpoint id,
    /// or a savepoint's location. Each vertex takes the state stored under its uid
    /// ([`Stream::uid`](crate::Stream::uid), its name by default) and its stored parallelism
    /// may differ from its new one (keyed state moves by key group, operator state is
    /// redistributed). A vertex with no state stored starts empty, and a source with no
    /// offsets stored starts at its log's beginning. Until the run completes a checkpoint of
    /// its own, a restart restores the same starting point again.
    pub start_from: StartFrom,
    /// Start even when the checkpoint the job starts from holds state of vertices (uids) the
    /// job does not have, dropping that state with a warning. Off by default: the start fails
    /// with [`Error::UnclaimedState`](crate::Error::UnclaimedState) naming them.
    pub allow_unclaimed_state: bool,
    /// What a restore does when checkpoints exist but none of them verifies (all corrupt or
    /// missing files). Default: [`NoValidCheckpoint::Fail`].
    pub when_no_checkpoint_verifies: NoValidCheckpoint,
    /// Consecutive checkpoint failures tolerated before the job fails with the last one's
    /// error ([`Error::CheckpointsFailing`]). Only failures of the checkpoint itself count: a
    /// storage error, a timeout, a task that could not write its state; not an abort caused by
    /// a task failure. A completed checkpoint resets the count. Default: 10 (Flink's
    /// `tolerable-failed-checkpoints`).
    pub tolerable_failed_checkpoints: u32,
    /// After the `k`-th consecutive checkpoint failure nothing is triggered for this long times
    /// `2^(k-1)`, at most 64 times it (so a failing final checkpoint is not retried in a tight
    /// loop). Default: 100 ms (then 0.2 s, 0.4 s, ... up to 6.4 s).
    pub checkpoint_failure_backoff: Duration,
    /// What a failover region does when one of its tasks fails (a failure of class
    /// [`ErrorClass::Fatal`](crate::ErrorClass) fails the job at once instead). Every region
    /// has its own budget, so a flapping region cannot spend a healthy one's. Default:
    /// [`RestartStrategy::default`], at most 10 failures a minute, restarting after 50 ms.
    pub restart: RestartStrategy,
    /// What the job does when a region has spent its budget ([`restart`](Self::restart)):
    /// restart every region from the latest complete checkpoint, each with a fresh budget, or
    /// give up and fail with [`Error::RestartsExhausted`](crate::Error). `Never` fails the job
    /// at a region's first give-up. Default: 3 full restarts 50 ms apart, then failure.
    pub job_restart: RestartStrategy,
    /// What the job's root does when the job's supervisor (its master actor) dies without
    /// having ended the job (a bug in it, or a [`Kill::JobSupervisor`](crate::chaos::Kill)):
    /// restart it, and restore the whole job from the latest complete checkpoint, or give up
    /// and fail with [`Error::RestartsExhausted`](crate::Error). Default:
    /// [`RestartStrategy::default`], at most 10 deaths a minute, restarting after 50 ms.
    pub supervisor_restart: RestartStrategy,
    /// What the job's supervisor does when the checkpoint coordinator actor dies: start a new
    /// one (its checkpoint ids continue above every id in the storage; the checkpoint in
    /// flight is lost), or give up and fail with [`Error::RestartsExhausted`](crate::Error).
    /// Default: at most 30 deaths a minute, restarting at once.
    pub coordinator_restart: RestartStrategy,
    /// Event-time sources emit their watermark at most this often.
    pub watermark_interval: Duration,
    /// An event-time source partition with no new record for this long no longer holds the
    /// watermark back; a source whose partitions are all idle marks itself idle downstream.
    pub idle_timeout: Duration,
    /// Reproducible scheduling: requires [`Threads::Current`]; snapshot and manifest writes run
    /// on the actors' thread instead of background threads, and sources advance tokio's clock by
    /// a fixed amount per batch. Run the job with tokio's clock paused (`tokio::time::pause`)
    /// and the same input gives the same sequence of events every time. Slower; for tests and
    /// chaos reproduction.
    pub deterministic: bool,
    /// How long a query to an actor operator waits for a task that is restarting before it
    /// fails with [`Error::Unavailable`](crate::Error::Unavailable) (retryable).
    pub query_timeout: Duration,
    /// How many of the newest checkpoints' stats and recovery times the job's metrics keep
    /// ([`MetricsSnapshot::checkpoints`](crate::runtime::MetricsSnapshot::checkpoints),
    /// [`recoveries`](crate::runtime::MetricsSnapshot::recoveries)); older ones are only
    /// counted. Keeps a job that runs for months in bounded memory, and
    /// [`JobHandle::metrics`](crate::JobHandle::metrics) in bounded time. At least 1.
    pub metrics_window: usize,
    /// How many of the newest lifecycle events the job keeps for its
    /// [`JobReport::events`](crate::JobReport::events) (an event recipient still gets every
    /// one); older ones are only counted ([`JobReport::events_total`](crate::JobReport::events_total)).
    /// At least 1.
    pub event_window: usize,
}

impl Default for JobConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        JobConfig {
            parallelism: cores as u32,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            checkpoints: CheckpointTiming::default(),
            mode: CheckpointMode::ExactlyOnce,
            batch_size: 1024,
            linger: Duration::ZERO,
            channel_capacity: 8,
            threads: Threads::Arbiters(cores),
            source_idle_poll: Duration::from_millis(10),
            start_from: StartFrom::Latest,
            allow_unclaimed_state: false,
            when_no_checkpoint_verifies: NoValidCheckpoint::Fail,
            tolerable_failed_checkpoints: 10,
            checkpoint_failure_backoff: Duration::from_millis(100),
            restart: RestartStrategy::default(),
            job_restart: RestartStrategy::FixedDelay {
                delay: Duration::from_millis(50),
                max_attempts: 3,
            },
            supervisor_restart: RestartStrategy::default(),
            coordinator_restart: RestartStrategy::FailureRate {
                max_failures: 30,
                window: Duration::from_secs(60),
                delay: Duration::ZERO,
            },
            watermark_interval: Duration::from_millis(10),
            idle_timeout: Duration::from_millis(200),
            deterministic: false,
            query_timeout: Duration::from_secs(5),
            metrics_window: 1_000,
            event_window: 10_000,
        }
    }
}

impl JobConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.metrics_window == 0 || self.event_window == 0 {
            return Err(Error::Config(format!(
                "metrics_window ({}) and event_window ({}) must be at least 1",
                self.metrics_window, self.event_window
            )));
        }
        if self.max_parallelism == 0 || self.max_parallelism > MAX_MAX_PARALLELISM {
            return Err(Error::Config(format!(
                "max_parallelism must be between 1 and {MAX_MAX_PARALLELISM}, not {}",
                self.max_parallelism
            )));
        }
        if self.batch_size == 0 || self.channel_capacity == 0 {
            return Err(Error::Config(
                "batch_size and channel_capacity must be above 0".into(),
            ));
        }
        if let Threads::Arbiters(0) = self.threads {
            return Err(Error::Config(
                "Threads::Arbiters needs at least one arbiter (or use Threads::Current)".into(),
            ));
        }
        if self.deterministic && self.threads != Threads::Current {
            return Err(Error::Config(
                "deterministic mode needs threads: Threads::Current".into(),
            ));
        }
        if self.checkpoints.timeout.is_zero() {
            return Err(Error::Config(
                "the checkpoint timeout must be above 0".into(),
            ));
        }
        Ok(())
    }
}
