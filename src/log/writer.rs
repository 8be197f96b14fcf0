//! [`LogWriter`]: an actix actor through which the actors of an application append to a log.
//!
//! The writer replies to an append only once the record is durable as the log's
//! [`Durability`] defines it: at once for a log that syncs on every append (or a volatile
//! one), after the next periodic sync for a log that syncs on an interval. The writer runs
//! that sync itself on a timer, so a reply never waits longer than the interval.
//!
//! Appends and syncs are blocking file I/O: start the writer on an arbiter of its own
//! (`LogWriter::start_in_arbiter`) when the appending actors must not wait for the disk.

use std::sync::Arc;

use actix::prelude::*;
use futures::future::{self, FutureExt};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{Durability, LogOffset, OffsetRange, PartitionId, ReplayableLog};
use crate::codec;
use crate::error::{Error, Result};

/// Appends one record; replies with its offset once it is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<LogOffset>")]
pub struct Append {
    /// The partition to append to.
    pub partition: PartitionId,
    /// The record's bytes.
    pub payload: Vec<u8>,
}

impl Append {
    /// An append of `value` encoded with the log codec (MessagePack).
    pub fn encode<T: Serialize>(partition: PartitionId, value: &T) -> Result<Append> {
        Ok(Append {
            partition,
            payload: codec::encode(value, "log record")?,
        })
    }
}

/// Appends records in order with one write; replies with their offsets once durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<OffsetRange>")]
pub struct AppendBatch {
    /// The partition to append to.
    pub partition: PartitionId,
    /// The records, in order.
    pub records: Vec<Vec<u8>>,
}

/// Syncs the log now and releases every reply waiting for durability.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct SyncNow;

#[derive(Debug)]
enum Waiter {
    One(oneshot::Sender<Result<LogOffset>>, LogOffset),
    Batch(oneshot::Sender<Result<OffsetRange>>, OffsetRange),
}

/// An actor that appends to a [`ReplayableLog`] on behalf of other actors.
#[derive(Debug)]
pub struct LogWriter {
    log: Arc<dyn ReplayableLog>,
    durability: Durability,
    waiting: Vec<Waiter>,
    max_waiting: usize,
}

impl LogWriter {
    /// A writer for `log`. Replies waiting for a sync are released at the log's sync interval,
    /// or sooner when 10,000 are waiting.
    pub fn new(log: Arc<dyn ReplayableLog>) -> LogWriter {
        let durability = log.durability();
        LogWriter {
            log,
            durability,
            waiting: Vec::new(),
            max_waiting: 10_000,
        }
    }

    /// Syncs the log and answers every waiting append, with success or the sync's error.
    fn sync_and_release(&mut self) -> Result<()> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let result = self.log.sync();
        let failure = result.as_ref().err().map(|e| e.to_string());
        for w in self.waiting.drain(..) {
            let err = || Error::Poisoned {
                what: "log".into(),
                reason: failure.clone().unwrap_or_default(),
            };
            // A requester that went away no longer needs its answer.
            match w {
                Waiter::One(tx, off) => {
                    let _ = tx.send(if failure.is_none() {
                        Ok(off)
                    } else {
                        Err(err())
                    });
                }
                Waiter::Batch(tx, range) => {
                    let _ = tx.send(if failure.is_none() {
                        Ok(range)
                    } else {
                        Err(err())
                    });
                }
            }
        }
        result
    }

    fn reply<T: Send + 'static>(
        &mut self,
        appended: Result<T>,
        wrap: fn(oneshot::Sender<Result<T>>, T) -> Waiter,
    ) -> ResponseFuture<Result<T>> {
        match (appended, self.durability) {
            (Ok(v), Durability::OnSync { .. }) => {
                let (tx, rx) = oneshot::channel();
                self.waiting.push(wrap(tx, v));
                if self.waiting.len() >= self.max_waiting {
                    // Errors reach every waiter through its channel.
                    let _ = self.sync_and_release();
                }
                Box::pin(rx.map(|r| {
                    r.unwrap_or_else(|e| {
                        Err(Error::ActorGone {
                            actor: "LogWriter",
                            reason: e.to_string(),
                        })
                    })
                }))
            }
            (result, _) => Box::pin(future::ready(result)),
        }
    }
}

impl Actor for LogWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Durability::OnSync { interval } = self.durability {
            ctx.run_interval(interval, |writer, _| {
                if let Err(e) = writer.sync_and_release() {
                    tracing::error!(error = %e, "log writer sync failed");
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Never panics: errors are handed to the waiters and logged.
        if let Err(e) = self.sync_and_release() {
            tracing::error!(error = %e, "log writer final sync failed");
        }
    }
}

impl Handler<Append> for LogWriter {
    type Result = ResponseFuture<Result<LogOffset>>;

    fn handle(&mut self, msg: Append, _ctx: &mut Self::Context) -> Self::Result {
        let appended = self.log.append(msg.partition, &msg.payload);
        self.reply(appended, Waiter::One)
    }
}

impl Handler<AppendBatch> for LogWriter {
    type Result = ResponseFuture<Result<OffsetRange>>;

    fn handle(&mut self, msg: AppendBatch, _ctx: &mut Self::Context) -> Self::Result {
        let slices: Vec<&[u8]> = msg.records.iter().map(|r| r.as_slice()).collect();
        let appended = self.log.append_batch(msg.partition, &slices);
        self.reply(appended, Waiter::Batch)
    }
}

impl Handler<SyncNow> for LogWriter {
    type Result = Result<()>;

    fn handle(&mut self, _msg: SyncNow, _ctx: &mut Self::Context) -> Self::Result {
        if self.waiting.is_empty() {
            self.log.sync()
        } else {
            self.sync_and_release()
        }
    }
}
