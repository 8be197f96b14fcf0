//! Records an operator fails on: the [`DeadLetter`] written for one, where a vertex sends them
//! ([`DeadLetterSpec`]), the panic boundary user code runs in, and how a failure is routed (to
//! the dead-letter log, or into the task's error with the record's log position).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::runtime::channel::Origin;

/// A record that failed, as written to a dead-letter log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The task whose operator failed on it.
    pub task: crate::checkpoint::TaskId,
    /// The error (or panic message).
    pub error: String,
    /// Where the record was read, when known (records a source sends on a forward edge).
    pub position: Option<(PartitionId, LogOffset)>,
    /// The record, MessagePack-encoded.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

/// Encodes a record for the dead-letter log.
pub(crate) type RecordEncoder<T> = Arc<dyn Fn(&T) -> Result<Vec<u8>> + Send + Sync>;

/// Where an operator sends the records it fails on, instead of failing its task.
pub(crate) struct DeadLetterSpec<T> {
    pub(crate) log: Arc<dyn ReplayableLog>,
    pub(crate) encode: RecordEncoder<T>,
}

impl<T> Clone for DeadLetterSpec<T> {
    fn clone(&self) -> Self {
        DeadLetterSpec {
            log: Arc::clone(&self.log),
            encode: Arc::clone(&self.encode),
        }
    }
}

/// Runs user code for one record inside a panic boundary. Inlined: it wraps every record of
/// the hot path, and it lives in another module (another codegen unit) than its callers.
#[inline]
pub(super) fn contained(f: impl FnOnce() -> Result<()>) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(Error::Panic {
            message: payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".into()),
        }),
    }
}

/// The log position of the `i`-th record of a batch read at `origin`.
fn position(origin: Option<Origin>, i: usize) -> Option<(PartitionId, LogOffset)> {
    origin.map(|(p, o)| (p, LogOffset(o.0 + i as u64)))
}

/// Names the failing record's position in an error, when it is known.
fn at_record(error: Error, origin: Option<Origin>, i: usize) -> Error {
    match position(origin, i) {
        Some((partition, offset)) => Error::AtRecord {
            partition,
            offset,
            source: Box::new(error),
        },
        None => error,
    }
}

/// Writes a failed record to the dead-letter log.
fn dead_letter<T>(
    spec: &DeadLetterSpec<T>,
    task: &crate::checkpoint::TaskId,
    record: &T,
    error: &Error,
    at: Option<(PartitionId, LogOffset)>,
) -> Result<()> {
    let letter = DeadLetter {
        task: task.clone(),
        error: error.to_string(),
        position: at,
        record: (spec.encode)(record)?,
    };
    let partitions = spec.log.partitions().max(1);
    spec.log.append(
        PartitionId(task.index % partitions),
        &codec::encode(&letter, "dead letter")?,
    )?;
    tracing::warn!(task = %task, error = %error, position = ?at, "record sent to the dead-letter log");
    Ok(())
}

/// Routes a record whose processing failed: to the dead-letter log when one is configured (the
/// record was then kept), otherwise into the task's error, naming the record's log position.
pub(super) fn route_failure<T>(
    spec: Option<&DeadLetterSpec<T>>,
    task: &crate::checkpoint::TaskId,
    kept: Option<T>,
    error: Error,
    origin: Option<Origin>,
    i: usize,
) -> Result<()> {
    match (spec, kept) {
        (Some(spec), Some(record)) => dead_letter(spec, task, &record, &error, position(origin, i)),
        _ => Err(at_record(error, origin, i)),
    }
}
