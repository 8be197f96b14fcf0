//! What a task does with its records, behind one object-safe trait so the task actor need not
//! know the record types: sources, (keyed) operators and sinks each implement [`TaskLogic`].
//!
//! A logic value owns the task's state (keyed and operator state, sink transactions, source
//! offsets) and its output [`Collector`]. The task actor calls it for records, barriers
//! (`capture`), end of input and checkpoint completion, inside a panic boundary.

mod actor;
mod async_io;
mod dead_letter;
mod keyed;
mod operator;
mod shared;
mod sink;
mod source;

pub(crate) use actor::{ActorLogic, InstanceLogic};
pub(crate) use async_io::AsyncLogic;
pub use dead_letter::DeadLetter;
pub(crate) use dead_letter::DeadLetterSpec;
pub(crate) use keyed::KeyedLogic;
pub(crate) use operator::OperatorLogic;
pub(crate) use shared::{
    Completion, EdgeKind, EncodeSnapshot, KeyGroupFn, LogicParams, OutputSpec, RestoreState,
    SourcePoll, TaskLogic,
};
pub(crate) use sink::SinkLogic;
pub(crate) use source::{Decoder, EventTimeSpec, SourceLogic};
