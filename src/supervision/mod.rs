//! Supervision: deciding what happens when a task fails.
//!
//! The job master (`runtime/master.rs`) is the root of each job's supervisor tree: it owns the
//! checkpoint coordinator actor and supervises every task actor through the `JoinHandle` of its
//! future, and every contained panic or returned error through a failure report. On a failure
//! it asks the job's [`RestartTracker`] for a [`RestartDecision`]; on a restart it stops the
//! failed task's whole failover region ([`failover_regions`]), discards the region's in-flight
//! data (its channels are replaced), and starts fresh task actors restored from the latest
//! complete checkpoint, with sources seeking to the checkpointed offsets. A restart never
//! resumes from in-memory state. When the strategy gives up, the job ends with the last
//! failure's error.

mod region;
mod strategy;

pub use region::failover_regions;
pub use strategy::{RestartDecision, RestartStrategy, RestartTracker};
