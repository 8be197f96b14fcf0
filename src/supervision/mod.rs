//! Supervision: deciding what happens when a task fails.
//!
//! A job's supervisor tree has three levels, each with its own [`RestartStrategy`]: the tasks
//! of a failover region ([`failover_regions`]) under their region, the regions under the job,
//! and the job under the application that holds its `JobHandle`. The decisions are pure
//! (`tree`: a failure in, a decision out, consulting `Error::class()`); the job master
//! (`runtime/master.rs`) only carries them out. A fatal error fails the job at once. Any other
//! failure restarts the failed task's region: its tasks are stopped, its in-flight data is
//! discarded (its channels are replaced), and fresh task actors are restored from the latest
//! complete checkpoint, with sources seeking to the checkpointed offsets. A region that spends
//! its budget escalates to the job, which restarts every region from the latest checkpoint
//! (each with a fresh budget) or, once its own budget is spent, fails with the error. A restart
//! never resumes from in-memory state.

mod region;
mod strategy;
pub(crate) mod tree;

pub use region::failover_regions;
pub use strategy::{RestartDecision, RestartStrategy, RestartTracker};
