//! [`ActorSink`]: delivers a job's output to an actor of the embedding application, one epoch
//! at a time, only once the epoch's checkpoint is complete.

use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TwoPhaseCommitSink;
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::ids::TaskInfo;

/// One output record as delivered to the user's actor. `(epoch, task, seq)` identifies it: a
/// receiver that remembers the highest `(epoch, seq)` per task can drop redeliveries, which
/// happen when a job restores from a checkpoint whose outputs were delivered before a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct SinkOutput<T: 'static> {
    /// The epoch (checkpoint) the record was committed in.
    pub epoch: CheckpointId,
    /// The index of the sink task that delivered it.
    pub task: u32,
    /// Its position among the records of this task in this epoch, from 0.
    pub seq: u64,
    /// The record.
    pub value: T,
}

/// Releases records to a `Recipient` after their epoch's checkpoint completes, in order, each
/// tagged with `(epoch, task, seq)`. Records of an epoch are held in the task's snapshot from
/// pre-commit until delivery, so a crash between the two loses nothing.
pub struct ActorSink<T: Send + 'static> {
    recipient: Recipient<SinkOutput<T>>,
    task: u32,
    buffer: Vec<T>,
}

impl<T: Send + 'static> std::fmt::Debug for ActorSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorSink")
            .field("task", &self.task)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<T: Send + 'static> Clone for ActorSink<T> {
    fn clone(&self) -> Self {
        ActorSink {
            recipient: self.recipient.clone(),
            task: 0,
            buffer: Vec::new(),
        }
    }
}

impl<T: Send + 'static> ActorSink<T> {
    /// A sink delivering to `recipient`.
    pub fn new(recipient: Recipient<SinkOutput<T>>) -> Self {
        ActorSink {
            recipient,
            task: 0,
            buffer: Vec::new(),
        }
    }
}

/// An epoch's records, pre-committed and waiting for delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + DeserializeOwned")]
pub struct ActorTxn<T> {
    epoch: u64,
    task: u32,
    records: Vec<T>,
}

impl<T> TwoPhaseCommitSink<T> for ActorSink<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Txn = ActorTxn<T>;

    fn open(&mut self, task: &TaskInfo) -> Result<()> {
        self.task = task.task.index;
        Ok(())
    }

    fn begin(&mut self, _epoch: CheckpointId) -> Result<()> {
        self.buffer.clear();
        Ok(())
    }

    fn write(&mut self, record: T) -> Result<()> {
        self.buffer.push(record);
        Ok(())
    }

    fn pre_commit(&mut self, epoch: CheckpointId) -> Result<ActorTxn<T>> {
        Ok(ActorTxn {
            epoch: epoch.0,
            task: self.task,
            records: std::mem::take(&mut self.buffer),
        })
    }

    fn commit(&mut self, txn: &ActorTxn<T>) -> Result<()> {
        for (seq, value) in txn.records.iter().enumerate() {
            self.recipient.do_send(SinkOutput {
                epoch: CheckpointId(txn.epoch),
                task: txn.task,
                seq: seq as u64,
                value: value.clone(),
            });
        }
        Ok(())
    }

    fn recover(&mut self, committed: &[ActorTxn<T>]) -> Result<()> {
        // Delivered before the crash or not: deliver again; receivers drop duplicates by tag.
        for txn in committed {
            self.commit(txn)?;
        }
        Ok(())
    }
}
