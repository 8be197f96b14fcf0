//! The crate's one error type.
//!
//! Every fallible operation in snapflow returns [`Result<T>`], whose error is [`Error`]. Each
//! variant carries the identifiers needed to diagnose it without reading logs (path, partition,
//! offset, checkpoint id, key group, task), and [`Error::class`] tells a supervisor from data,
//! never from message text, whether retrying can help ([`ErrorClass`]).

use std::path::PathBuf;

use crate::ids::{CheckpointId, KeyGroup, KeyGroupRange, LogOffset, PartitionId, TaskId};

/// The result type used throughout snapflow.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failure should be handled by whoever supervises the failing work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A transient condition (an interrupted or timed-out I/O call): the same operation may
    /// succeed if tried again.
    Retryable,
    /// The work cannot go on from where it is, but restarting it from the last durable state
    /// (the last complete checkpoint) can succeed: corrupt data, a failed task, a lost write.
    Restart,
    /// A mistake in configuration, input or usage that no retry or restart can fix.
    Fatal,
}

/// Every error snapflow reports.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    #[error("i/o error while trying to {op} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("open segment", "fsync directory").
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error (shared, so that an `Error` can be cloned).
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },

    /// A log record failed its checksum or framing check, and is not a torn tail that can be
    /// truncated: the log holds valid records after it.
    #[error("log partition {partition} is corrupt at offset {offset} ({path}): {reason}")]
    LogCorrupt {
        /// The partition holding the record.
        partition: PartitionId,
        /// The offset of the first record that could not be read.
        offset: LogOffset,
        /// The segment file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },

    /// A record is larger than the configured maximum record size.
    #[error("record of {len} bytes in partition {partition} exceeds the maximum record size of {max} bytes")]
    RecordTooLarge {
        /// The partition written or read.
        partition: PartitionId,
        /// The record's length (possibly a corrupt length field).
        len: u64,
        /// The configured maximum.
        max: u64,
    },

    /// A read asked for an offset that the partition does not hold (below the retained start or
    /// past the end).
    #[error("offset {offset} is outside partition {partition}'s retained range [{start}, {end})")]
    OffsetOutOfRange {
        /// The partition.
        partition: PartitionId,
        /// The offset asked for.
        offset: LogOffset,
        /// The oldest retained offset.
        start: LogOffset,
        /// The next offset to be written.
        end: LogOffset,
    },

    /// A partition number beyond the log's partition count.
    #[error("partition {partition} does not exist (the log has {partitions} partitions)")]
    UnknownPartition {
        /// The partition asked for.
        partition: PartitionId,
        /// How many partitions the log has.
        partitions: u32,
    },

    /// Encoding or decoding bytes (a record payload, a snapshot, a manifest) failed.
    #[error("cannot {op} {what}: {reason}")]
    Codec {
        /// "encode" or "decode".
        op: &'static str,
        /// What was being encoded or decoded.
        what: String,
        /// The codec's message.
        reason: String,
    },

    /// A state snapshot is corrupt or does not fit the state it is restored into.
    #[error("state snapshot is corrupt{}: {reason}", key_group.map(|g| format!(" in key group {g}")).unwrap_or_default())]
    StateCorrupt {
        /// The key group whose blob failed, where known.
        key_group: Option<KeyGroup>,
        /// What check failed.
        reason: String,
    },

    /// Restored state cannot become the type the code now registers for it: a change its
    /// schema does not allow (a field added without a default, a type changed without a
    /// migration, a version with no migration from the stored one, a downgrade). Fatal: the
    /// same code can never restore the same checkpoint.
    #[error("state '{}' cannot be restored: it was stored as {}, the code registers {}: {}", .0.state, .0.stored, .0.current, .0.reason)]
    StateIncompatible(Box<StateIncompatibility>),

    /// A state name was registered again with a different kind or value type.
    #[error("state '{name}' is already registered as {existing}, not {requested}")]
    StateTypeMismatch {
        /// The state's name.
        name: String,
        /// The kind and type it was registered with.
        existing: String,
        /// The kind and type asked for now.
        requested: String,
    },

    /// Keyed state was used before a current key was set.
    #[error("keyed state '{name}' was accessed with no current key set")]
    NoCurrentKey {
        /// The state's name.
        name: String,
    },

    /// A key falls in a key group that this task does not own.
    #[error("key group {key_group} is not owned by this task (it owns {range})")]
    KeyGroupNotOwned {
        /// The key's key group.
        key_group: KeyGroup,
        /// The range the task owns.
        range: KeyGroupRange,
    },

    /// A parallelism or max parallelism outside the allowed range.
    #[error("invalid parallelism {parallelism}: it must be between 1 and the max parallelism {max_parallelism}")]
    InvalidParallelism {
        /// The parallelism asked for.
        parallelism: u32,
        /// The max parallelism (number of key groups).
        max_parallelism: u32,
    },

    /// A checkpoint's manifest or state file is missing, truncated or fails its checksum.
    #[error("checkpoint {checkpoint} is corrupt ({path}): {reason}")]
    CheckpointCorrupt {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The file that failed.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },

    /// A checkpoint that was asked for does not exist or is not complete.
    #[error("checkpoint {checkpoint} of job '{job}' not found")]
    CheckpointNotFound {
        /// The job.
        job: String,
        /// The checkpoint.
        checkpoint: CheckpointId,
    },

    /// Another writer completed checkpoint `checkpoint` first: its manifest was already there
    /// when this one was written (conditional create). Two runs of one job share a checkpoint
    /// storage; the checkpoint that is there is left as it is.
    #[error("checkpoint {checkpoint} of job '{job}' was completed by another writer: two runs of one job share its checkpoint storage")]
    CheckpointExists {
        /// The job.
        job: String,
        /// The checkpoint.
        checkpoint: CheckpointId,
    },

    /// A call to a remote service (an object store, a Kafka broker) failed, after the
    /// retries its client makes. `class` says what may help: [`ErrorClass::Retryable`] for a
    /// network failure or a timeout, [`ErrorClass::Fatal`] for refused credentials or an
    /// unsupported operation.
    #[error("{what} failed: {reason}")]
    Remote {
        /// The call and what it was about (`PUT s3 object jobs/x/chk-1/_manifest`).
        what: String,
        /// What the service or its client said.
        reason: String,
        /// How a supervisor should treat it.
        class: ErrorClass,
    },

    /// A restore was asked to start from a location (a savepoint's directory) that holds no
    /// checkpoint manifest.
    #[error("no checkpoint or savepoint at {location:?} (no manifest there)")]
    NothingAtLocation {
        /// The location asked for.
        location: String,
    },

    /// The checkpoint or savepoint a job starts from holds state of vertices the job does not
    /// have (matched by uid: removed, or renamed without keeping the uid). Restoring would
    /// drop that state silently, so the job refuses to start unless
    /// [`JobConfig::allow_unclaimed_state`](crate::JobConfig::allow_unclaimed_state) is set.
    #[error("checkpoint {checkpoint} holds state of {} that no vertex of the job claims: keep their uids (Stream::uid), or set JobConfig::allow_unclaimed_state to drop it", .vertices.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", "))]
    UnclaimedState {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The uids nobody claims.
        vertices: Vec<String>,
    },

    /// A name that would reach the file system (job, vertex, task, checkpoint) is unsafe.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name names ("job", "vertex").
        kind: &'static str,
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A store failed an earlier write or fsync and refuses further writes; restart from the
    /// last durable state.
    #[error("{what} failed earlier and refuses further writes: {reason}")]
    Poisoned {
        /// What is poisoned ("log partition 3").
        what: String,
        /// The first failure.
        reason: String,
    },

    /// An error caused by one record, with where that record was read.
    #[error("at the record of partition {partition} offset {offset}: {source}")]
    AtRecord {
        /// The record's partition.
        partition: PartitionId,
        /// The record's offset.
        offset: LogOffset,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// An error that happened inside a task, with the task it happened in.
    #[error("in task {task}: {source}")]
    InTask {
        /// The task.
        task: TaskId,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// User code panicked; the panic was contained in its task.
    #[error("panic in user code: {message}")]
    Panic {
        /// The panic message.
        message: String,
    },

    /// A task actor stopped without being asked to (killed, its arbiter gone).
    #[error("task stopped unexpectedly: {reason}")]
    TaskStopped {
        /// How it ended.
        reason: String,
    },

    /// The job graph is not valid.
    #[error("invalid job graph: {0}")]
    InvalidGraph(String),

    /// Checkpoints kept failing for a reason of their own (storage errors, timeouts, tasks
    /// declining), more times in a row than the job tolerates
    /// ([`JobConfig::tolerable_failed_checkpoints`](crate::JobConfig)). Aborts caused by task
    /// failures do not count.
    #[error("{failures} checkpoints failed in a row (the job tolerates {tolerable}); the last, checkpoint {checkpoint}: {reason}")]
    CheckpointsFailing {
        /// Consecutive failures.
        failures: u32,
        /// How many the job tolerates.
        tolerable: u32,
        /// The last checkpoint that failed.
        checkpoint: CheckpointId,
        /// Why it failed.
        reason: String,
        /// The error behind the last failure, when there was one (a storage error).
        #[source]
        source: Option<Box<Error>>,
    },

    /// Every level of the job's supervisor tree spent its restarts: the failed task's region
    /// its own strategy ([`JobConfig::restart`](crate::JobConfig)), then the job its strategy
    /// of full restarts ([`JobConfig::job_restart`](crate::JobConfig)).
    #[error("the job gave up restarting ({reason}); the last failure: {source}")]
    RestartsExhausted {
        /// Why, level by level ("region 0: 10 failures within 60s ...; job: 3 restarts
        /// allowed, all used").
        reason: String,
        /// The failure that ended the job, with its task.
        #[source]
        source: Box<Error>,
    },

    /// Checkpoints exist, but none of them verifies: restoring is impossible, and starting over
    /// from the beginning of the log would repeat output that was already committed. Starting
    /// over must be asked for ([`JobConfig::when_no_checkpoint_verifies`](crate::JobConfig)).
    #[error("no checkpoint of job '{job}' verifies ({}); starting over would commit output twice, so the job does not start over unless asked to", .rejected.iter().map(|(id, why)| format!("checkpoint {id}: {why}")).collect::<Vec<_>>().join("; "))]
    NoValidCheckpoint {
        /// The job.
        job: String,
        /// Every checkpoint that was tried, newest first, with why it was rejected.
        rejected: Vec<(CheckpointId, String)>,
    },

    /// A broken internal invariant: a bug in snapflow.
    #[error("internal error (a bug in snapflow): {0}")]
    Internal(String),

    /// An actor that was asked to do something is gone (its mailbox closed).
    #[error("actor {actor} is not running: {reason}")]
    ActorGone {
        /// Which actor.
        actor: &'static str,
        /// The mailbox error.
        reason: String,
    },

    /// An address, ingress or message named something the running job does not have: a vertex
    /// that does not exist, one that is not an actor operator or an ingress, or one of
    /// another type.
    #[error("{what}: {reason}")]
    NoSuchEndpoint {
        /// What was asked for, of which job (`job 'bank' has no actor operator 'accounts'`).
        what: String,
        /// Why it does not match, with what the job does have.
        reason: String,
    },

    /// The job has ended: its addresses and ingresses take no more messages.
    #[error("job '{job}' has ended: {what} takes no more messages")]
    JobEnded {
        /// The job.
        job: String,
        /// The address or ingress that was used.
        what: String,
    },

    /// A task did not answer in time because it is restarting (or its job is recovering).
    /// Queries are read-only: asking again is safe.
    #[error("{what} is unavailable: {reason}")]
    Unavailable {
        /// The task or vertex asked.
        what: String,
        /// Why (restarting, timed out after how long).
        reason: String,
    },

    /// A query or command handler returned an error or panicked. The task goes on; for a
    /// command, the command counts as applied (with whatever state changes the handler made
    /// before it failed, the same in every replay).
    #[error("{handler} failed: {source}")]
    HandlerFailed {
        /// The operator vertex and message type.
        handler: String,
        /// What the handler returned (or its panic).
        #[source]
        source: Box<Error>,
    },

    /// Output could not be handed to its receiving actor (its mailbox is closed).
    #[error("delivery to {receiver} failed: {reason}")]
    DeliveryFailed {
        /// The receiver (its message type).
        receiver: String,
        /// Why.
        reason: String,
    },
}

/// What [`Error::StateIncompatible`] says (boxed: the error enum stays small).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateIncompatibility {
    /// The state's name.
    pub state: String,
    /// The stored schema (version, type, fields).
    pub stored: String,
    /// The schema of the type registered now.
    pub current: String,
    /// Why the stored values do not decode as it.
    pub reason: String,
}

impl Error {
    /// How a supervisor should treat this error.
    pub fn class(&self) -> ErrorClass {
        use std::io::ErrorKind;
        match self {
            Error::InTask { source, .. } | Error::AtRecord { source, .. } => source.class(),
            Error::Io { source, .. } => match source.kind() {
                ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    ErrorClass::Retryable
                }
                ErrorKind::PermissionDenied | ErrorKind::InvalidInput => ErrorClass::Fatal,
                _ => ErrorClass::Restart,
            },
            Error::LogCorrupt { .. }
            | Error::StateCorrupt { .. }
            | Error::CheckpointCorrupt { .. }
            | Error::CheckpointNotFound { .. }
            | Error::Poisoned { .. }
            | Error::ActorGone { .. } => ErrorClass::Restart,
            Error::Codec { .. } => ErrorClass::Restart,
            Error::Panic { .. } | Error::TaskStopped { .. } | Error::Internal(_) => {
                ErrorClass::Restart
            }
            Error::CheckpointsFailing { source, .. } => {
                source.as_ref().map_or(ErrorClass::Restart, |e| e.class())
            }
            Error::RestartsExhausted { source, .. } => source.class(),
            Error::InvalidGraph(_) | Error::NoValidCheckpoint { .. } => ErrorClass::Fatal,
            Error::NothingAtLocation { .. } | Error::UnclaimedState { .. } => ErrorClass::Fatal,
            Error::CheckpointExists { .. } => ErrorClass::Fatal,
            Error::Remote { class, .. } => *class,
            Error::RecordTooLarge { .. }
            | Error::OffsetOutOfRange { .. }
            | Error::UnknownPartition { .. }
            | Error::StateTypeMismatch { .. }
            | Error::StateIncompatible(_)
            | Error::NoCurrentKey { .. }
            | Error::KeyGroupNotOwned { .. }
            | Error::InvalidParallelism { .. }
            | Error::InvalidName { .. }
            | Error::Config(_) => ErrorClass::Fatal,
            Error::NoSuchEndpoint { .. } | Error::JobEnded { .. } => ErrorClass::Fatal,
            Error::Unavailable { .. } => ErrorClass::Retryable,
            Error::HandlerFailed { source, .. } => source.class(),
            Error::DeliveryFailed { .. } => ErrorClass::Restart,
        }
    }

    /// Adds the task this error happened in (once: an error already tagged keeps its task).
    pub fn in_task(self, task: &TaskId) -> Error {
        match self {
            e @ Error::InTask { .. } => e,
            e => Error::InTask {
                task: task.clone(),
                source: Box::new(e),
            },
        }
    }

    /// True when trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: std::sync::Arc::new(source),
        }
    }

    pub(crate) fn encode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Codec {
            op: "encode",
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn decode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Codec {
            op: "decode",
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_enum_stays_at_most_72_bytes_because_every_records_result_carries_it() {
        // Each record's `Result<()>` crosses the task's panic boundary; growing the enum to 80
        // bytes cost bench_keyed_sum 5 % of its instructions. Box a large variant's fields.
        assert!(
            std::mem::size_of::<Error>() <= 72,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn interrupted_io_is_retryable_and_corruption_needs_a_restart() {
        let e = Error::io(
            "read",
            "/x",
            std::io::Error::from(std::io::ErrorKind::Interrupted),
        );
        assert_eq!(e.class(), ErrorClass::Retryable);
        let e = Error::LogCorrupt {
            partition: PartitionId(1),
            offset: LogOffset(7),
            path: "/x".into(),
            reason: "crc".into(),
        };
        assert_eq!(e.class(), ErrorClass::Restart);
        assert!(e.to_string().contains("offset 7"));
        assert_eq!(Error::Config("x".into()).class(), ErrorClass::Fatal);
        let task = TaskId::new("count", 1).expect("task");
        let tagged = e
            .in_task(&task)
            .in_task(&TaskId::new("other", 0).expect("task"));
        assert_eq!(tagged.class(), ErrorClass::Restart);
        assert!(
            tagged.to_string().starts_with("in task count[1]: "),
            "{tagged}"
        );
    }
}
