//! Side outputs written exactly once (`SideOutputs`): the records a task writes to a log
//! beside its outputs (dead letters, late records), through the same two-phase commit as sinks.
//!
//! A task's side records of an epoch wait in memory; at the epoch's barrier they become a
//! pre-committed transaction in the task's operator state (the checkpoint holds them); when
//! the checkpoint completes they are appended to their log. A restore commits the transactions
//! of the checkpoint it restored again, idempotently: every record carries its task, epoch and
//! position in the epoch, and the commit scans the log partition from the end offset it had at
//! the pre-commit, appending only the records it does not find there.
//!
//! **Invariant:** a side record reaches its log only once the checkpoint of its epoch has
//! completed, and at most once per (task, epoch, position): a replay after a failure writes
//! nothing twice.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointId, TaskId};
use crate::error::Result;
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::state::{OperatorListState, OperatorStateBackend, Redistribution};

/// The operator state holding a task's pre-committed side transactions.
const SIDE_STATE: &str = "snapflow.side-outputs";

/// How many records a recovery scan reads at a time.
const SCAN_BATCH: usize = 1024;

/// Tells a side log's records apart: the (task, epoch, position) a record carries, `None` for
/// a record that is not a side record (a log may be shared).
pub(crate) type Identify = fn(&[u8]) -> Option<(TaskId, u64, u32)>;

/// The identity a side record is written with (see [`SideOutputs::push`]).
pub(crate) struct SideId<'a> {
    pub(crate) task: &'a TaskId,
    pub(crate) epoch: u64,
    pub(crate) seq: u32,
}

/// One pre-committed epoch of one side log, as the checkpoint stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SideTxn {
    /// The side log's name in its task ([`SideOutputs::register`]).
    log: String,
    /// The task that wrote the records (after a rescale another task may commit them).
    origin: TaskId,
    /// The epoch the records carry.
    epoch: u64,
    /// The barrier that closed the epoch: the transaction commits with that checkpoint.
    barrier: u64,
    partition: u32,
    /// The partition's end offset at the pre-commit: any append of these records is above it.
    from: u64,
    /// The encoded records, their positions in the epoch in order.
    records: Vec<serde_bytes::ByteBuf>,
}

/// One registered side log of a task.
#[derive(Debug)]
struct SideLog {
    name: String,
    log: Arc<dyn ReplayableLog>,
    partition: PartitionId,
    identify: Identify,
    /// The open epoch's records.
    open: Vec<Vec<u8>>,
    /// Pre-committed, not yet committed, oldest first.
    pending: Vec<SideTxn>,
}

/// A task's side logs and their transactions.
#[derive(Debug)]
pub(crate) struct SideOutputs {
    task: TaskId,
    parallelism: u32,
    /// The open epoch: the one after the last barrier (or the restored checkpoint).
    epoch: u64,
    logs: Vec<SideLog>,
    /// Restored transactions of logs not registered yet.
    restored: Vec<SideTxn>,
    state: Option<OperatorListState<SideTxn>>,
}

impl SideOutputs {
    /// The side outputs of `task` (of `parallelism` tasks), whose first epoch is `first_epoch`.
    pub(crate) fn new(task: TaskId, parallelism: u32, first_epoch: CheckpointId) -> SideOutputs {
        SideOutputs {
            task,
            parallelism,
            epoch: first_epoch.0,
            logs: Vec::new(),
            restored: Vec::new(),
            state: None,
        }
    }

    /// Takes the restored transactions this task commits (every task sees all of them: union
    /// redistribution; each commits those whose origin maps to it) and commits those of the
    /// logs registered so far. A task with no side log and nothing restored registers nothing.
    pub(crate) fn open(&mut self, state: &mut OperatorStateBackend) -> Result<()> {
        if self.logs.is_empty() && !state.has_pending_list(SIDE_STATE) {
            return Ok(());
        }
        self.ensure_state(state)?;
        Ok(())
    }

    fn ensure_state(&mut self, state: &mut OperatorStateBackend) -> Result<()> {
        if self.state.is_some() {
            return Ok(());
        }
        let list = state.list_state::<SideTxn>(SIDE_STATE, Redistribution::Union)?;
        let (p, me) = (self.parallelism, self.task.index);
        self.restored = list
            .clear(state)?
            .into_iter()
            .filter(|t| t.origin.index % p == me)
            .collect();
        self.state = Some(list);
        for i in 0..self.logs.len() {
            self.recover(i)?;
        }
        Ok(())
    }

    /// Registers a side log under `name` (unique in the task), written to partition
    /// `task index % partitions`. After `open`, its restored transactions are committed at
    /// once.
    pub(crate) fn register(
        &mut self,
        name: &str,
        log: Arc<dyn ReplayableLog>,
        identify: Identify,
        state: Option<&mut OperatorStateBackend>,
    ) -> Result<()> {
        if self.logs.iter().any(|l| l.name == name) {
            return Err(crate::Error::Config(format!(
                "side log '{name}' registered twice in task {}",
                self.task
            )));
        }
        let partition = PartitionId(self.task.index % log.partitions().max(1));
        self.logs.push(SideLog {
            name: name.to_string(),
            log,
            partition,
            identify,
            open: Vec::new(),
            pending: Vec::new(),
        });
        match state {
            Some(state) if self.state.is_none() => self.ensure_state(state),
            Some(_) => self.recover(self.logs.len() - 1),
            None => Ok(()),
        }
    }

    /// Drops the restored transactions of side logs no longer registered once the task is
    /// open (the new code writes no such log), saying so.
    pub(crate) fn opened(&mut self) {
        for t in self.restored.drain(..) {
            tracing::warn!(task = %self.task, log = %t.log, records = t.records.len(), "restored side records of a side log the task no longer has are dropped");
        }
    }

    /// Adds a record to the open epoch of side log `name`; `encode` writes it with the
    /// identity it is given.
    pub(crate) fn push(
        &mut self,
        name: &str,
        encode: impl FnOnce(SideId<'_>) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let Some(log) = self.logs.iter_mut().find(|l| l.name == name) else {
            return Err(crate::Error::Internal(format!(
                "side log '{name}' used before it was registered"
            )));
        };
        let seq = u32::try_from(log.open.len()).map_err(|_| {
            crate::Error::Internal(format!(
                "more than 2^32 side records in one epoch of '{name}'"
            ))
        })?;
        log.open.push(encode(SideId {
            task: &self.task,
            epoch: self.epoch,
            seq,
        })?);
        Ok(())
    }

    /// Barrier `checkpoint`: the open epoch's records become a pre-committed transaction,
    /// stored in `state` (written before the capture of the task's operator state).
    pub(crate) fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
        state: &mut OperatorStateBackend,
    ) -> Result<()> {
        for log in &mut self.logs {
            if log.open.is_empty() {
                continue;
            }
            let from = log.log.end_offset(log.partition)?;
            log.pending.push(SideTxn {
                log: log.name.clone(),
                origin: self.task.clone(),
                epoch: self.epoch,
                barrier: checkpoint.0,
                partition: log.partition.0,
                from: from.0,
                records: log.open.drain(..).map(serde_bytes::ByteBuf::from).collect(),
            });
        }
        self.epoch = checkpoint.0 + 1;
        if let Some(list) = &self.state {
            let all = self
                .logs
                .iter()
                .flat_map(|l| l.pending.iter().cloned())
                .collect();
            list.update(state, all)?;
        }
        Ok(())
    }

    /// Checkpoint `checkpoint` is complete: appends the transactions it covers.
    pub(crate) fn commit(&mut self, checkpoint: CheckpointId) -> Result<()> {
        for log in &mut self.logs {
            let done = log
                .pending
                .iter()
                .take_while(|t| t.barrier <= checkpoint.0)
                .count();
            for t in &log.pending[..done] {
                let records: Vec<&[u8]> = t.records.iter().map(|r| r.as_slice()).collect();
                log.log.append_batch(log.partition, &records)?;
            }
            log.pending.drain(..done);
        }
        Ok(())
    }

    /// Commits the restored transactions of log `i` again: appends the records the log does
    /// not hold yet.
    fn recover(&mut self, i: usize) -> Result<()> {
        let log = &self.logs[i];
        let (mine, rest): (Vec<SideTxn>, Vec<SideTxn>) = std::mem::take(&mut self.restored)
            .into_iter()
            .partition(|t| t.log == log.name);
        self.restored = rest;
        for t in mine {
            let partition = PartitionId(t.partition % log.log.partitions().max(1));
            let found = scan(log, partition, &t)?;
            let missing: Vec<&[u8]> = t
                .records
                .iter()
                .enumerate()
                .filter(|(seq, _)| !found.contains(&(*seq as u32)))
                .map(|(_, r)| r.as_slice())
                .collect();
            if !missing.is_empty() {
                log.log.append_batch(partition, &missing)?;
            }
            tracing::debug!(task = %self.task, log = %t.log, epoch = t.epoch, appended = missing.len(), already = found.len(), "side transaction committed after a restore");
        }
        Ok(())
    }
}

/// The positions of `t`'s records already in `partition` of the log at or above `t.from`.
fn scan(log: &SideLog, partition: PartitionId, t: &SideTxn) -> Result<HashSet<u32>> {
    let mut found = HashSet::new();
    let start = log.log.start_offset(partition)?;
    if start.0 > t.from {
        tracing::warn!(log = %t.log, partition = partition.0, from = t.from, start = start.0, "the side log was trimmed above a restored transaction's start: its records may be written twice");
    }
    let mut at = LogOffset(t.from.max(start.0));
    let end = log.log.end_offset(partition)?;
    while at < end {
        let batch = log.log.read(partition, at, SCAN_BATCH)?;
        if batch.is_empty() {
            break;
        }
        for (_, bytes) in batch.iter() {
            if let Some((task, epoch, seq)) = (log.identify)(bytes) {
                if task == t.origin && epoch == t.epoch {
                    found.insert(seq);
                }
            }
        }
        at = batch.next_offset();
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::log::MemoryLog;

    type Rec = (TaskId, u64, u32, u64);

    fn identify(bytes: &[u8]) -> Option<(TaskId, u64, u32)> {
        let (task, epoch, seq, _): Rec = codec::decode(bytes, "test record").ok()?;
        Some((task, epoch, seq))
    }

    fn task(index: u32) -> TaskId {
        TaskId {
            vertex: "v".into(),
            index,
        }
    }

    fn values(log: &MemoryLog) -> Vec<Rec> {
        let end = log.end_offset(PartitionId(0)).expect("end").0 as usize;
        let batch = log.read(PartitionId(0), LogOffset(0), end).expect("read");
        batch
            .iter()
            .map(|(_, b)| codec::decode(b, "test record").expect("decode"))
            .collect()
    }

    /// Epoch 1 of task 0 writes values 10, 11, 12; barrier 1 pre-commits them. Returns the side
    /// outputs, their operator state, and that state as checkpoint 1 restores it.
    fn pre_committed(
        log: &Arc<MemoryLog>,
    ) -> (SideOutputs, OperatorStateBackend, OperatorStateBackend) {
        let mut side = SideOutputs::new(task(0), 1, CheckpointId(1));
        let mut state = OperatorStateBackend::new();
        side.register("s", log.clone(), identify, Some(&mut state))
            .expect("register");
        for v in 10..13 {
            side.push("s", |id| {
                codec::encode(&(id.task, id.epoch, id.seq, v), "test record")
            })
            .expect("push");
        }
        side.pre_commit(CheckpointId(1), &mut state)
            .expect("pre-commit");
        let restored = OperatorStateBackend::restored(state.snapshot().expect("snapshot"));
        (side, state, restored)
    }

    /// A task restored from checkpoint 1: its side outputs commit what the checkpoint holds.
    fn restore(log: &Arc<MemoryLog>, mut state: OperatorStateBackend) {
        let mut side = SideOutputs::new(task(0), 1, CheckpointId(2));
        side.register("s", log.clone(), identify, None)
            .expect("register");
        side.open(&mut state).expect("open");
        side.opened();
    }

    #[test]
    fn a_restored_side_transaction_is_appended_once_whatever_was_written_before_the_crash() {
        let written = |log: &MemoryLog| -> Vec<u64> { values(log).iter().map(|r| r.3).collect() };
        // Committed before the crash: the restore appends nothing.
        let log = Arc::new(MemoryLog::new(1));
        let (mut side, _, state) = pre_committed(&log);
        assert!(
            written(&log).is_empty(),
            "nothing before the checkpoint completes"
        );
        side.commit(CheckpointId(1)).expect("commit");
        restore(&log, state);
        assert_eq!(written(&log), vec![10, 11, 12]);
        // The crash came before the commit: the restore appends all of it.
        let log = Arc::new(MemoryLog::new(1));
        let (_side, _, state) = pre_committed(&log);
        restore(&log, state);
        assert_eq!(written(&log), vec![10, 11, 12]);
        // Part of it was appended (and another task's record with the same epoch and
        // position): the restore appends the rest.
        let log = Arc::new(MemoryLog::new(1));
        let (_side, _, state) = pre_committed(&log);
        let other: Rec = (task(1), 1, 1, 99);
        log.append(PartitionId(0), &codec::encode(&other, "r").expect("encode"))
            .expect("append");
        let first: Rec = (task(0), 1, 0, 10);
        log.append(PartitionId(0), &codec::encode(&first, "r").expect("encode"))
            .expect("append");
        restore(&log, state);
        assert_eq!(written(&log), vec![99, 10, 11, 12]);
    }

    #[test]
    fn a_side_transaction_commits_only_with_a_checkpoint_that_covers_it() {
        let log = Arc::new(MemoryLog::new(1));
        let (mut side, mut state, _) = pre_committed(&log);
        side.push("s", |id| {
            codec::encode(&(id.task, id.epoch, id.seq, 13u64), "r")
        })
        .expect("push");
        side.commit(CheckpointId(0)).expect("an older checkpoint");
        assert!(values(&log).is_empty());
        side.commit(CheckpointId(1)).expect("commit");
        let v = values(&log);
        assert_eq!(v.iter().map(|r| r.3).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert!(v.iter().all(|r| r.1 == 1), "epoch 1: {v:?}");
        // 13 belongs to epoch 2, still open.
        side.pre_commit(CheckpointId(2), &mut state)
            .expect("pre-commit");
        side.commit(CheckpointId(2)).expect("commit");
        assert_eq!(
            values(&log).last().map(|r| (r.1, r.2, r.3)),
            Some((2, 0, 13))
        );
    }
}
