//! # snapflow
//!
//! Fault-tolerant stateful stream processing on [actix](https://docs.rs/actix) actors, with
//! exactly-once state through aligned checkpoints.
//!
//! The dataflow runtime ([`runtime`]: [`JobBuilder`], [`JobHandle`], supervised task actors,
//! aligned checkpoints, two-phase-commit [`sink`]s) stands on these pieces:
//!
//! - [`log`]: the replayable, partitioned log sources read by offset ([`FileLog`],
//!   [`MemoryLog`], [`LogWriter`] for appending from actors);
//! - [`state`]: stable key groups, keyed state with typed handles, operator state, and
//!   snapshots by key group;
//! - [`checkpoint`]: crash-safe checkpoint storage with checksummed files and atomic manifests;
//! - [`storage`]: the [`FileSystem`](storage::FileSystem) every durable byte goes through, and
//!   [`SimDisk`](storage::sim::SimDisk), a disk that loses power on cue for crash tests;
//! - [`Error`]: the one error type, with an [`ErrorClass`] for supervisors.
//!
//! ```
//! use snapflow::prelude::*;
//!
//! # fn main() -> snapflow::Result<()> {
//! // Keyed state for task 0 of 1: it owns every key group.
//! let range = KeyGroupRange::for_task(0, 1, DEFAULT_MAX_PARALLELISM)?;
//! let mut state = KeyedStateBackend::<String>::new(range, DEFAULT_MAX_PARALLELISM)?;
//! let count = state.value_state::<u64>("count")?;
//! for word in ["a", "b", "a"] {
//!     state.set_current_key(word.to_string())?;
//!     *count.get_or_insert_with(&mut state, || 0)? += 1;
//! }
//!
//! // Snapshot, then restore into a fresh backend.
//! let snapshot = state.snapshot()?;
//! let mut restored = KeyedStateBackend::<String>::new(range, DEFAULT_MAX_PARALLELISM)?;
//! restored.restore([&snapshot])?;
//! let count = restored.value_state::<u64>("count")?;
//! restored.set_current_key("a".to_string())?;
//! assert_eq!(count.get(&restored)?, Some(&2));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod chaos;
pub mod checkpoint;
pub mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ids;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
pub mod runtime;
pub mod sink;
pub mod state;
pub mod storage;
pub mod supervision;
#[cfg(feature = "web")]
pub mod web;
pub use runtime::metrics;
pub use runtime::time;

pub use checkpoint::{
    CheckpointId, CheckpointKind, CheckpointStorage, CompletedCheckpoint, LocalCheckpointStorage,
    Manifest, MemoryCheckpointStorage, SourceOffset, StateDescriptor, StateHandle, TaskId,
    TaskStateEntry, VertexRecord,
};
pub use error::{Error, ErrorClass, Result, StateIncompatibility};
pub use log::{
    Durability, FileLog, FileLogOptions, LogOffset, LogWriter, MemoryLog, OffsetRange, PartitionId,
    RecordBatch, ReplayableLog, SyncPolicy, TypedLog,
};
pub use runtime::{
    ActorOperator, Applied, Command, CommandHandler, Commands, Ingest, Ingress,
    InstanceCommandHandler, InstanceCommands, InstanceOperator, InstanceQueryContext,
    InstanceQueryHandler, InstanceRef, OperatorRef, Query, QueryContext, QueryHandler,
};
pub use runtime::{AsyncFunction, AsyncMode, AsyncOptions};
pub use runtime::{
    Collector, Job, JobBuilder, JobConfig, JobEnd, JobEvent, JobHandle, JobReport, JobStatus,
    KeyedOperator, KeyedStream, LogSource, NoValidCheckpoint, Operator, Savepoint, StartFrom,
    Stream, Threads, DEFAULT_CHECKPOINT_DIR,
};
pub use sink::{ActorSink, CollectSink, FileSink, SinkOutput, TwoPhaseCommitSink};
pub use storage::validate_name;
pub use supervision::RestartStrategy;

/// The names most programs need, for `use snapflow::prelude::*`.
pub mod prelude {
    pub use crate::checkpoint::{CheckpointId, CheckpointStorage, LocalCheckpointStorage, TaskId};
    pub use crate::error::{Error, ErrorClass, Result};
    pub use crate::log::{
        FileLog, FileLogOptions, LogOffset, MemoryLog, PartitionId, ReplayableLog, SyncPolicy,
        TypedLog,
    };
    pub use crate::runtime::time::{
        TimeDomain, Timestamp, WatermarkStrategy, Window, WindowAssigner,
    };
    pub use crate::runtime::{
        ActorOperator, Applied, Command, CommandHandler, Commands, Ingest, Ingress,
        InstanceCommandHandler, InstanceCommands, InstanceOperator, InstanceQueryContext,
        InstanceQueryHandler, InstanceRef, OperatorRef, Query, QueryContext, QueryHandler,
    };
    pub use crate::runtime::{AsyncFunction, AsyncMode, AsyncOptions};
    pub use crate::runtime::{
        Collector, Job, JobBuilder, JobConfig, JobEnd, JobEvent, JobHandle, JobReport,
        KeyedContext, KeyedOperator, KeyedStream, LogSource, Operator, OperatorContext, Savepoint,
        StartFrom, Stream, Threads,
    };
    pub use crate::runtime::{WindowAggregator, WindowResult};
    pub use crate::sink::{ActorSink, CollectSink, FileSink, SinkOutput, TwoPhaseCommitSink};
    pub use crate::state::{
        KeyGroupRange, KeyedStateBackend, OperatorStateBackend, Redistribution, StableHash,
        StateVersion, TaskSnapshot, DEFAULT_MAX_PARALLELISM,
    };
    pub use crate::supervision::RestartStrategy;
}

// The README's code is compiled and run as a doctest, so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
