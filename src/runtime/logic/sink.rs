//! The logic of a sink task ([`SinkLogic`]): a [`TwoPhaseCommitSink`] whose transactions are
//! pre-committed at each barrier, kept in operator state and committed when the checkpoint
//! completes.

use std::any::Any;

use super::shared::{downcast, operator_capture, Capture, LogicParams, TaskLogic};
use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::runtime::channel::{Envelope, Origin};
use crate::runtime::operator::{Data, TaskInfo};
use crate::sink::TwoPhaseCommitSink;
use crate::state::{OperatorListState, OperatorStateBackend, Redistribution};

const SINK_TXNS: &str = "snapflow.sink-transactions";

/// A sink task driving a [`TwoPhaseCommitSink`].
pub(crate) struct SinkLogic<T, S: TwoPhaseCommitSink<T>> {
    sink: S,
    info: TaskInfo,
    state: OperatorStateBackend,
    txns: Option<OperatorListState<(u32, u64, S::Txn)>>,
    /// Pre-committed transactions not yet committed, oldest first.
    pending: Vec<(u64, S::Txn)>,
    epoch: CheckpointId,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Data, S: TwoPhaseCommitSink<T>> SinkLogic<T, S> {
    pub(crate) fn new(sink: S, p: LogicParams) -> Result<Self> {
        Ok(SinkLogic {
            sink,
            state: OperatorStateBackend::restored(p.restore.operator),
            info: p.info,
            txns: None,
            pending: Vec::new(),
            epoch: p.first_epoch,
            _t: std::marker::PhantomData,
        })
    }
}

impl<T: Data, S: TwoPhaseCommitSink<T>> SinkLogic<T, S> {
    fn save_pending(&mut self) -> Result<()> {
        if let Some(list) = &self.txns {
            let me = self.info.task.index;
            let v = self
                .pending
                .iter()
                .map(|(e, t)| (me, *e, t.clone()))
                .collect();
            list.update(&mut self.state, v)?;
        }
        Ok(())
    }
}

impl<T: Data, S: TwoPhaseCommitSink<T>> TaskLogic for SinkLogic<T, S> {
    fn open(&mut self) -> Result<()> {
        self.sink.open(&self.info)?;
        // Union redistribution: every task sees every pre-committed transaction of the
        // checkpoint, so none is lost when the sink's parallelism changes; commits are
        // idempotent.
        let txns = self
            .state
            .list_state::<(u32, u64, S::Txn)>(SINK_TXNS, Redistribution::Union)?;
        let restored = txns.clear(&mut self.state)?;
        // Every task sees every transaction; each is recovered by exactly one task: the one
        // whose index its origin task maps to (the same task when the parallelism is unchanged).
        let (p, me) = (self.info.parallelism, self.info.task.index);
        let committed: Vec<S::Txn> = restored
            .into_iter()
            .filter(|(origin, _, _)| origin % p == me)
            .map(|(_, _, t)| t)
            .collect();
        self.sink.recover(&committed)?;
        self.txns = Some(txns);
        self.sink.begin(self.epoch)
    }

    fn on_records(&mut self, batch: Box<dyn Any + Send>, _origin: Option<Origin>) -> Result<()> {
        for r in downcast::<T>(batch)? {
            self.sink.write(r)?;
        }
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<()> {
        Ok(())
    }

    fn capture(&mut self, checkpoint: CheckpointId) -> Result<Capture> {
        // Barrier n closes the open epoch, whose records are those since the previous barrier.
        // Ids can skip (a checkpoint aborted by a region restart never reaches this task), so
        // the epoch takes the barrier's id.
        if checkpoint != self.epoch {
            tracing::debug!(task = %self.info.task, barrier = %checkpoint, open = %self.epoch, "sink epoch takes the barrier's id");
        }
        let txn = self.sink.pre_commit(checkpoint)?;
        self.pending.push((checkpoint.0, txn));
        self.save_pending()?;
        let capture = operator_capture(&self.state)?;
        self.epoch = CheckpointId(checkpoint.0 + 1);
        self.sink.begin(self.epoch)?;
        Ok(capture)
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<()> {
        let mut done = 0;
        for (epoch, txn) in &self.pending {
            if *epoch > checkpoint.0 {
                break;
            }
            self.sink.commit(txn)?;
            done += 1;
        }
        if done > 0 {
            self.pending.drain(..done);
            self.save_pending()?;
        }
        Ok(())
    }

    fn drain(&mut self, _all: bool, _out: &mut Vec<(usize, Envelope)>) {}

    fn kill_hosted(&mut self) -> bool {
        self.sink.kill_hosted()
    }

    fn has_buffered(&self) -> bool {
        false
    }
}
