//! The dataflow runtime: operators as actors, checkpoint barriers as messages.
//!
//! A user builds a job with [`JobBuilder`]: sources read a [`ReplayableLog`](crate::ReplayableLog),
//! operators transform streams ([`Stream::map`], [`Stream::flat_map`], [`Stream::process`] with an
//! [`Operator`], [`KeyedStream::process`] with a [`KeyedOperator`], [`KeyedStream::reduce`]), and
//! sinks ([`crate::sink`]) end them. [`Job::start`] runs it inside the current actix System and
//! returns a [`JobHandle`]; [`Job::run`] runs a bounded job standalone.
//!
//! Every task (one parallel instance of a vertex) is one actix actor ([`task`](self) module docs
//! give its contract). Records travel in batches over bounded channels; barriers and
//! end-of-input travel in-band on the same channels. The checkpoint coordinator actor triggers
//! checkpoints, collects the acks the job master relays and writes the manifest; the master
//! (the job's supervisor) relays triggers to the sources, tells every task a checkpoint
//! completed, and restarts what failed; the job root above it holds what the `JobHandle` needs
//! and restarts the master if it dies.

pub mod actor;
pub mod async_io;
mod channel;
mod config;
mod events;
mod graph;
mod handle;
mod ledger;
mod logic;
mod master;
mod messages;
pub mod metrics;
mod operator;
mod root;
mod side_output;
mod task;
pub mod time;
mod topology;

pub use actor::{
    ActorOperator, Applied, Command, CommandHandler, Commands, Ingest, Ingress,
    InstanceCommandHandler, InstanceCommands, InstanceOperator, InstanceQueryContext,
    InstanceQueryHandler, InstanceRef, OperatorRef, Query, QueryContext, QueryHandler,
};
pub use async_io::{AsyncFunction, AsyncMode, AsyncOptions};
pub use channel::Collector;
pub use config::{JobConfig, NoValidCheckpoint, StartFrom, Threads};
pub use events::{JobEnd, JobEvent, Savepoint};
pub use graph::{Job, JobBuilder, KeyedStream, LogSource, Stream, DEFAULT_CHECKPOINT_DIR};
pub use handle::{JobHandle, JobReport, JobStatus};
pub use logic::DeadLetter;
pub use metrics::{
    AbortedCheckpoint, CheckpointStats, EdgeInfo, ExceptionRecord, FailureCounts, JobGraph,
    MetricsSnapshot, Partitioning, RestartRecord, SourcePartitionMetrics, TaskMetrics,
    TimelineEntry, VertexInfo, VertexKind,
};
pub use operator::{Data, KeyedContext, KeyedOperator, Operator, OperatorContext, TaskInfo};
pub use time::window::{LateRecord, WindowAggregator, WindowResult, WindowedStream};
