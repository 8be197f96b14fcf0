//! [`ActorSink`]: delivers a job's output to an actor of the embedding application, one epoch
//! at a time, only once the epoch's checkpoint is complete, each record once.
//!
//! Guarantee: within one process, the receiving actor sees every output record of the job
//! exactly once, in order per sink task, across task failures, region restarts, restarts of the
//! job's supervisor and restores, with no deduplication of its own. The sink remembers, per
//! sink task, how far it has served the receiver (epoch and position, in the `ActorSink` value
//! shared by all of the job's incarnations), so the redelivery a restore would make (it commits
//! the restored checkpoint's pending epoch again) is withheld. Delivery that fails (the
//! receiver's mailbox is closed) is an error the job sees ([`Error::DeliveryFailed`], a
//! restart): the record is not counted as served, and is delivered after the restart if the
//! receiver is reachable again. What the receiver had received when it died is lost with it
//! unless it keeps it elsewhere; a new process (a new `ActorSink`) starts serving at the epoch
//! it restores, so a receiver that outlives the process sees that epoch again.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TwoPhaseCommitSink;
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::ids::TaskInfo;

/// One output record as delivered to the user's actor. `(epoch, task, seq)` identifies it and
/// increases per sink task; within a process the receiver never sees one twice (see the module
/// docs), so it needs no deduplication; across processes, one that outlives the job's process
/// may see the restored epoch again and can drop it by this tag.
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
/// tagged with `(epoch, task, seq)`, each once (see the module docs). Records of an epoch are
/// held in the task's snapshot from pre-commit until delivery, so a crash between the two
/// loses nothing. Clones share what has been served, per sink vertex and task: a job's restarts
/// reuse the clones it was built with.
pub struct ActorSink<T: Send + 'static> {
    recipient: Recipient<SinkOutput<T>>,
    task: u32,
    vertex: String,
    buffer: Vec<T>,
    served: Served,
}

/// Per sink task (vertex and index): the epoch being served and how many of its records the
/// receiver has.
type Served = Arc<Mutex<HashMap<(String, u32), (u64, u64)>>>;

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
            vertex: String::new(),
            buffer: Vec::new(),
            served: Arc::clone(&self.served),
        }
    }
}

impl<T: Send + 'static> ActorSink<T> {
    /// A sink delivering to `recipient`.
    pub fn new(recipient: Recipient<SinkOutput<T>>) -> Self {
        ActorSink {
            recipient,
            task: 0,
            vertex: String::new(),
            buffer: Vec::new(),
            served: Arc::default(),
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
        self.vertex = task.task.vertex.clone();
        if task.restored_from.is_none() {
            // Nothing of this task was committed, so nothing was served: a fresh start (or
            // another job reusing this sink) begins at its first epoch.
            self.served
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(self.vertex.clone(), self.task));
        }
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
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let at = served
            .entry((self.vertex.clone(), txn.task))
            .or_insert((0, 0));
        let from = match txn.epoch.cmp(&at.0) {
            std::cmp::Ordering::Less => return Ok(()), // served before a restore
            std::cmp::Ordering::Equal => at.1 as usize,
            std::cmp::Ordering::Greater => 0,
        };
        *at = (txn.epoch, from as u64);
        for (seq, value) in txn.records.iter().enumerate().skip(from) {
            let output = SinkOutput {
                epoch: CheckpointId(txn.epoch),
                task: txn.task,
                seq: seq as u64,
                value: value.clone(),
            };
            match self.recipient.try_send(output) {
                Ok(()) => {}
                // A full mailbox still takes the message (actix queues past its capacity).
                Err(SendError::Full(output)) => self.recipient.do_send(output),
                Err(SendError::Closed(_)) => {
                    return Err(Error::DeliveryFailed {
                        receiver: format!("the receiver of {}", std::any::type_name::<T>()),
                        reason: format!(
                            "its mailbox is closed (epoch {}, record {seq} of sink task {})",
                            txn.epoch, txn.task
                        ),
                    });
                }
            }
            at.1 = seq as u64 + 1;
        }
        Ok(())
    }

    fn recover(&mut self, committed: &[ActorTxn<T>]) -> Result<()> {
        // What was served before the crash is withheld by `commit`.
        for txn in committed {
            self.commit(txn)?;
        }
        Ok(())
    }
}
