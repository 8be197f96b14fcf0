//! Records an operator fails on: the [`DeadLetter`] written for one, where a vertex sends them
//! ([`DeadLetterSpec`]), the panic boundary user code runs in, and how a failure is routed (to
//! the dead-letter log, or into the task's error with the record's log position).
//!
//! Dead letters go through the task's side outputs: they reach the log when the checkpoint of
//! their epoch completes, once each however often the records are replayed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::shared::LogicParams;
use crate::checkpoint::TaskId;
use crate::codec;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::runtime::channel::Origin;
use crate::runtime::side_output::SideOutputs;

/// A record that failed, as written to a dead-letter log: once, when the checkpoint after the
/// failure completes.
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
    /// The epoch of the task the record failed in (the checkpoint that wrote it, at the
    /// latest): with `seq`, what tells this letter apart when a restore writes it again.
    #[serde(default)]
    pub epoch: u64,
    /// The letter's position among the task's dead letters of the epoch.
    #[serde(default)]
    pub seq: u32,
}

impl DeadLetter {
    /// Decodes the failed record as a `T`.
    pub fn decode_record<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        codec::decode(&self.record, "a dead letter's record")
    }

    /// The side-output identity of an encoded letter.
    fn identify(bytes: &[u8]) -> Option<(TaskId, u64, u32)> {
        let letter: DeadLetter = codec::decode(bytes, "dead letter").ok()?;
        Some((letter.task, letter.epoch, letter.seq))
    }
}

/// The side log dead letters go to, in each task that has one.
const DEAD_LETTERS: &str = "dead-letters";

/// The side outputs of a task, with its dead-letter log when `spec` gives one.
pub(super) fn side_outputs<T>(
    p: &LogicParams,
    spec: Option<&DeadLetterSpec<T>>,
) -> Result<SideOutputs> {
    let mut side = SideOutputs::new(p.info.task.clone(), p.info.parallelism, p.first_epoch);
    if let Some(spec) = spec {
        side.register(
            DEAD_LETTERS,
            Arc::clone(&spec.log),
            DeadLetter::identify,
            None,
        )?;
    }
    Ok(side)
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

/// Adds a failed record to the open epoch of the task's dead letters.
fn dead_letter<T>(
    spec: &DeadLetterSpec<T>,
    side: &mut SideOutputs,
    record: &T,
    error: &Error,
    at: Option<(PartitionId, LogOffset)>,
) -> Result<()> {
    let record = (spec.encode)(record)?;
    side.push(DEAD_LETTERS, |id| {
        let letter = DeadLetter {
            task: id.task.clone(),
            error: error.to_string(),
            position: at,
            record,
            epoch: id.epoch,
            seq: id.seq,
        };
        tracing::warn!(task = %id.task, error = %error, position = ?at, "record sent to the dead-letter log (written when the next checkpoint completes)");
        codec::encode(&letter, "dead letter")
    })
}

/// Routes a record whose processing failed: to the dead-letter log when one is configured (the
/// record was then kept), otherwise into the task's error, naming the record's log position.
pub(super) fn route_failure<T>(
    spec: Option<&DeadLetterSpec<T>>,
    side: &mut SideOutputs,
    kept: Option<T>,
    error: Error,
    origin: Option<Origin>,
    i: usize,
) -> Result<()> {
    match (spec, kept) {
        (Some(spec), Some(record)) => dead_letter(spec, side, &record, &error, position(origin, i)),
        _ => Err(at_record(error, origin, i)),
    }
}
