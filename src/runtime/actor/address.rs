//! [`OperatorRef`]: the application's address of an actor operator vertex, and what the
//! running job keeps for its addresses and ingresses ([`Outside`]).

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use super::adapter::ActorAdapter;
use super::outside::{ActorEntry, Outside};
use super::wire::{AnyReply, CommandRecord, QueryFn, Replies, RunQuery};
use super::{ActorOperator, Command, CommandHandler, Query, QueryHandler};
use crate::codec;
use crate::error::{Error, Result};
use crate::log::{Append, PartitionId};
use crate::runtime::logic::ActorLogic;
use crate::state::{key_group_for, task_for_key_group};

/// The address of an actor operator vertex (see the [module docs](super)). Cheap to clone;
/// valid for the life of the job, across restarts of its tasks.
pub struct OperatorRef<Op: ActorOperator> {
    entry: Arc<ActorEntry>,
    outside: Arc<Outside>,
    _op: PhantomData<fn() -> Op>,
}

impl<Op: ActorOperator> Clone for OperatorRef<Op> {
    fn clone(&self) -> Self {
        OperatorRef {
            entry: Arc::clone(&self.entry),
            outside: Arc::clone(&self.outside),
            _op: PhantomData,
        }
    }
}

impl<Op: ActorOperator> std::fmt::Debug for OperatorRef<Op> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRef")
            .field("vertex", &self.entry.vertex)
            .field("parallelism", &self.entry.parallelism)
            .finish()
    }
}

/// The answer to a command once it was applied: its reply, and a future of the reply once
/// the checkpoint that contains the command has completed.
#[derive(Debug)]
pub struct Applied<R> {
    /// The reply of the application (visible-once: a restore may roll it back and apply the
    /// command again, possibly with another reply).
    pub reply: R,
    durable: oneshot::Receiver<Result<AnyReply>>,
    ended: watch::Receiver<bool>,
    ended_error: Error,
}

impl<R: Send + 'static> Applied<R> {
    /// Waits until a complete checkpoint contains the command, and returns the reply of the
    /// application that checkpoint holds (durable-once: no restore will roll it back). Fails
    /// with [`Error::JobEnded`] if the job ends before.
    pub async fn durable(self) -> Result<R> {
        let Applied {
            mut durable,
            ended,
            ended_error,
            ..
        } = self;
        let answer = tokio::select! {
            biased;
            r = &mut durable => r.ok(),
            _ = Outside::until_ended(ended) => durable.try_recv().ok(),
        };
        match answer {
            Some(r) => downcast(r?),
            None => Err(ended_error),
        }
    }
}

/// Forgets a registered command unless disarmed (its append answered).
struct Unregister<'a>(Option<(&'a Replies, u64)>);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let Some((replies, seq)) = self.0.take() {
            replies.forget(seq);
        }
    }
}

fn downcast<R: 'static>(reply: AnyReply) -> Result<R> {
    reply.downcast::<R>().map(|r| *r).map_err(|_| {
        Error::Internal(format!(
            "a reply was not of type {}",
            std::any::type_name::<R>()
        ))
    })
}

type Logic<Op> = ActorLogic<
    <Op as ActorOperator>::Key,
    <Op as ActorOperator>::In,
    <Op as ActorOperator>::Out,
    ActorAdapter<Op>,
>;

/// A query waiting to be run, with its key.
type QuerySlot<Op, Q> = Arc<Mutex<Option<(<Op as ActorOperator>::Key, Q)>>>;

/// The closure a task runs for a query. The query waits in `slot` so that a query lost with a
/// dead task's mailbox can be sent again to the next incarnation.
fn query_fn<Op, Q>(slot: QuerySlot<Op, Q>, handler: String) -> QueryFn
where
    Op: QueryHandler<Q>,
    Q: Query,
{
    Box::new(move |logic| {
        let logic = logic.downcast_mut::<Logic<Op>>().ok_or_else(|| {
            Error::Internal(format!("{handler}: the task does not run this operator"))
        })?;
        let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((key, query)) = taken else {
            return Err(Error::Internal(format!("{handler}: the query ran twice")));
        };
        let reply = logic
            .query(key, |op, ctx| op.0.query(query, ctx))
            .map_err(|e| Error::HandlerFailed {
                handler: handler.clone(),
                source: Box::new(e),
            })?;
        Ok(Box::new(reply) as AnyReply)
    })
}

impl<Op: ActorOperator> OperatorRef<Op> {
    /// The address of actor operator vertex `name`, checked to run `Op`.
    pub(crate) fn lookup(outside: &Arc<Outside>, name: &str) -> Result<OperatorRef<Op>> {
        let what = format!("actor operator '{name}'");
        let Some(entry) = outside.actors.get(name) else {
            let have = outside.actors.keys().collect();
            return Err(outside.no_such(what, name, "an actor operator", have));
        };
        if entry.type_id != TypeId::of::<Op>() {
            return Err(Error::NoSuchEndpoint {
                what: format!("job '{}' has no {what}", outside.job),
                reason: format!(
                    "it runs {}, not {}",
                    entry.type_name,
                    std::any::type_name::<Op>()
                ),
            });
        }
        Ok(OperatorRef {
            entry: Arc::clone(entry),
            outside: Arc::clone(outside),
            _op: PhantomData,
        })
    }

    /// The vertex's name.
    pub fn vertex(&self) -> &str {
        &self.entry.vertex
    }

    /// The index of the task that owns `key`.
    pub fn task_of(&self, key: &Op::Key) -> u32 {
        let kg = key_group_for(key, self.entry.max_parallelism);
        task_for_key_group(kg, self.entry.parallelism, self.entry.max_parallelism)
    }

    fn handler<M>(&self, kind: &str) -> String {
        format!(
            "{kind} {} on '{}'",
            std::any::type_name::<M>(),
            self.entry.vertex
        )
    }

    /// Asks the task owning `key` the query `query`, answered from its live state.
    ///
    /// While that task restarts, the query waits for the restored task, for at most
    /// [`JobConfig::query_timeout`](crate::JobConfig::query_timeout), then fails with
    /// [`Error::Unavailable`] (retryable). After the job ended it fails with
    /// [`Error::JobEnded`]; a handler's error comes back as [`Error::HandlerFailed`].
    pub async fn query<Q: Query>(&self, key: Op::Key, query: Q) -> Result<Q::Reply>
    where
        Op: QueryHandler<Q>,
    {
        let handler = self.handler::<Q>("query");
        let number = self.entry.first_task + self.task_of(&key) as usize;
        let mut endpoint = self
            .outside
            .endpoints
            .watch(number)
            .ok_or_else(|| Error::Internal(format!("{handler}: no task {number}")))?;
        let slot = Arc::new(Mutex::new(Some((key, query))));
        let deadline = tokio::time::Instant::now() + self.outside.query_timeout;
        let unavailable = |reason: &str| Error::Unavailable {
            what: format!(
                "task {} of '{}'",
                number - self.entry.first_task,
                self.entry.vertex
            ),
            reason: reason.to_string(),
        };
        loop {
            if self.outside.has_ended() {
                return Err(self
                    .outside
                    .ended_error(format!("the address of '{}'", self.entry.vertex)));
            }
            let current = endpoint.borrow_and_update().clone();
            if let Some(recipient) = current {
                let sent = recipient.send(RunQuery(query_fn::<Op, Q>(
                    Arc::clone(&slot),
                    handler.clone(),
                )));
                match tokio::time::timeout_at(deadline, sent).await {
                    Ok(Ok(Err(Error::Unavailable { .. }))) | Ok(Err(_)) => {
                        // That incarnation failed or is gone: wait for the next one.
                    }
                    Ok(Ok(answer)) => return answer.and_then(downcast),
                    Err(_) => {
                        return Err(unavailable(&format!(
                            "no answer within {:?}",
                            self.outside.query_timeout
                        )))
                    }
                }
                if slot.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                    return Err(unavailable("the task failed while answering"));
                }
            }
            let ended = Outside::until_ended(self.outside.ended.clone());
            tokio::select! {
                changed = endpoint.changed() => if changed.is_err() {
                    return Err(Error::Internal("the job's endpoints were dropped".into()));
                },
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(unavailable(&format!(
                        "the task is restarting and was not back within {:?}",
                        self.outside.query_timeout
                    )));
                }
            }
        }
    }

    /// Sends the command `command` to `key`: appends it to the vertex's command log (replying
    /// once it is durable under the log's sync policy), then waits until the task owning the
    /// key has applied it, in order with its records, and returns the reply. A command that is
    /// in the log is applied exactly once in the job's state and output, after a restore if
    /// need be: this future does not time out, and fails only when the append fails (the
    /// command's fate is then unknown if the log was poisoned after writing it) or the job
    /// ends before the command was applied ([`Error::JobEnded`]).
    pub async fn command<C: Command>(&self, key: Op::Key, command: C) -> Result<Applied<C::Reply>>
    where
        Op: CommandHandler<C>,
    {
        let what = || format!("the address of '{}'", self.entry.vertex);
        if self.outside.has_ended() {
            return Err(self.outside.ended_error(what()));
        }
        let e = &self.entry;
        if !e.declared.contains(C::name()) {
            // Refused before it reaches the log: logged, it would fail on every replay.
            return Err(Error::NoSuchEndpoint {
                what: format!(
                    "actor operator '{}' takes no command '{}'",
                    e.vertex,
                    C::name()
                ),
                reason:
                    "its `ActorOperator::commands` does not declare it: add `commands.add::<..>()`"
                        .into(),
            });
        }
        let seq = e.seq.fetch_add(1, Ordering::Relaxed);
        let kg = key_group_for(&key, e.max_parallelism);
        let partition = PartitionId(u32::from(kg.0) % e.partitions);
        let record = CommandRecord {
            run: e.replies.run(),
            seq,
            name: C::name().to_string(),
            key,
            payload: codec::encode(&command, "command")?,
        };
        let payload = codec::encode(&record, "command record")?;
        let (applied, durable) = e.replies.register(seq);
        // A caller that drops this future before the append answers leaves no entry behind.
        let mut unregister = Unregister(Some((&e.replies, seq)));
        let offset = match e.writer.send(Append { partition, payload }).await {
            Ok(Ok(offset)) => offset,
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(self.outside.ended_error(what())),
        };
        unregister.0 = None;
        e.replies.positioned(seq, partition, offset);
        self.outside.endpoints.wake(e.sources.clone());
        let ended = Outside::until_ended(self.outside.ended.clone());
        let answer = tokio::select! {
            biased;
            r = applied => r.map_err(|_| Error::Internal("a command reply was dropped".into()))?,
            _ = ended => Err(self.outside.ended_error(what())),
        };
        let reply = answer.and_then(downcast::<C::Reply>)?;
        Ok(Applied {
            reply,
            durable,
            ended: self.outside.ended.clone(),
            ended_error: self.outside.ended_error(what()),
        })
    }
}
