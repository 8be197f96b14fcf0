//! Sinks: where a job's results leave it, and with which guarantee.
//!
//! Every sink implements [`TwoPhaseCommitSink`] (design notes, section 3). The runtime drives
//! it per epoch (the records between barrier n-1 and barrier n belong to epoch n):
//!
//! 1. `begin(n)` opens epoch n's transaction; `write` adds records to it;
//! 2. on barrier n, `pre_commit(n)` flushes it and returns a handle, which goes into the
//!    task's snapshot of checkpoint n;
//! 3. when checkpoint n is complete, `commit(handle)` makes it visible (for every pre-committed
//!    epoch up to n);
//! 4. on restore from checkpoint n, `recover(handles in n)` commits those (idempotently) and
//!    aborts every other pending transaction of the task.
//!
//! Built in: [`FileSink`] (exactly-once: pending files renamed on commit), [`ActorSink`]
//! (exactly-once release to a `Recipient`, tagged for deduplication), [`CollectSink`]
//! (at-least-once, for tests and examples).

mod actor;
mod collect;
mod file;
mod participant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::ids::TaskInfo;

pub use actor::{ActorSink, SinkOutput};
pub use collect::CollectSink;
pub(crate) use file::check_file_name;
pub use file::{FileSink, FileTxn};
pub use participant::{
    ActorParticipant, ChaosStop, CheckpointedActor, Deliver, RestoreSnapshot, TakeSnapshot,
    ASK_TIMEOUT,
};

/// What a sink guarantees about its output after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Every record's effect is visible exactly once.
    ExactlyOnce,
    /// Every record's effect is visible at least once: after a restore, output since the last
    /// checkpoint is produced again.
    AtLeastOnce,
}

/// A sink whose output becomes visible per epoch, when the epoch's checkpoint completes.
/// One instance per sink task, cloned from the one given to the job builder.
pub trait TwoPhaseCommitSink<T>: Send + 'static {
    /// A pre-committed transaction: enough to commit it after a crash. Stored in checkpoints.
    type Txn: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;

    /// Called once per task before anything else.
    fn open(&mut self, _task: &TaskInfo) -> Result<()> {
        Ok(())
    }

    /// Opens the transaction of `epoch`.
    fn begin(&mut self, epoch: CheckpointId) -> Result<()>;

    /// Adds a record to the open transaction.
    fn write(&mut self, record: T) -> Result<()>;

    /// Flushes the open transaction so it survives a crash and returns its handle.
    fn pre_commit(&mut self, epoch: CheckpointId) -> Result<Self::Txn>;

    /// Makes a pre-committed transaction visible. Must be idempotent: after a crash it may be
    /// called again for a transaction that was already committed.
    fn commit(&mut self, txn: &Self::Txn) -> Result<()>;

    /// After a restore: commits `committed` (the transactions recorded in the checkpoint
    /// restored from) and aborts every other pending transaction this task left behind.
    fn recover(&mut self, committed: &[Self::Txn]) -> Result<()>;

    /// The guarantee this sink gives.
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    /// The chaos monkey's [`Kill::ApplicationActor`](crate::chaos::Kill::ApplicationActor):
    /// stop what the sink hosts (an [`ActorParticipant`]'s actor); false when it hosts none.
    fn kill_hosted(&mut self) -> bool {
        false
    }
}
