//! [`CollectSink`]: collects records into a shared vector. At-least-once.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Guarantee, TwoPhaseCommitSink};
use crate::checkpoint::CheckpointId;
use crate::error::Result;

/// Pushes every record into a shared `Vec` as soon as it arrives.
///
/// **At-least-once:** records are visible before their checkpoint completes, so after a
/// restore the records since the last checkpoint appear again. Use it in tests and examples
/// where that is acceptable; use [`FileSink`](super::FileSink) or
/// [`ActorSink`](super::ActorSink) for exactly-once output.
#[derive(Debug)]
pub struct CollectSink<T> {
    records: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for CollectSink<T> {
    fn clone(&self) -> Self {
        CollectSink {
            records: Arc::clone(&self.records),
        }
    }
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        CollectSink {
            records: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T: Clone> CollectSink<T> {
    /// An empty sink.
    pub fn new() -> Self {
        CollectSink::default()
    }

    /// A copy of the records collected so far, in arrival order.
    pub fn records(&self) -> Vec<T> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Clone + Send + 'static> TwoPhaseCommitSink<T> for CollectSink<T> {
    type Txn = ();

    fn begin(&mut self, _epoch: CheckpointId) -> Result<()> {
        Ok(())
    }

    fn write(&mut self, record: T) -> Result<()> {
        self.lock().push(record);
        Ok(())
    }

    fn pre_commit(&mut self, _epoch: CheckpointId) -> Result<()> {
        Ok(())
    }

    fn commit(&mut self, _txn: &()) -> Result<()> {
        Ok(())
    }

    fn recover(&mut self, _committed: &[()]) -> Result<()> {
        Ok(())
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }
}
