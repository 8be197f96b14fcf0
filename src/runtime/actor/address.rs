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

pub(super) fn downcast<R: 'static>(reply: AnyReply) -> Result<R> {
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

/// The closure a task runs for a query: downcasts the task's logic to `L` and runs `run` on
/// it with the query waiting in `slot`. The query waits in the slot so that a query lost with
/// a dead task's mailbox can be sent again to the next incarnation.
pub(super) fn query_fn<L, P, R>(
    slot: Arc<Mutex<Option<P>>>,
    handler: String,
    run: impl FnOnce(&mut L, P) -> Result<R> + Send + 'static,
) -> QueryFn
where
    L: 'static,
    P: Send + 'static,
    R: Send + 'static,
{
    Box::new(move |logic| {
        let logic = logic.downcast_mut::<L>().ok_or_else(|| {
            Error::Internal(format!("{handler}: the task does not run this operator"))
        })?;
        let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(payload) = taken else {
            return Err(Error::Internal(format!("{handler}: the query ran twice")));
        };
        let reply = run(logic, payload).map_err(|e| Error::HandlerFailed {
            handler: handler.clone(),
            source: Box::new(e),
        })?;
        Ok(Box::new(reply) as AnyReply)
    })
}

/// What an address needs of its vertex: the entry, and the job.
pub(super) struct Target<'a> {
    pub(super) entry: &'a ActorEntry,
    pub(super) outside: &'a Outside,
}

impl Target<'_> {
    /// The description of message type `M` of kind `kind` (query, command) on this vertex.
    pub(super) fn handler<M>(&self, kind: &str) -> String {
        format!(
            "{kind} {} on '{}'",
            std::any::type_name::<M>(),
            self.entry.vertex
        )
    }

    /// Runs the query `make` builds (again for each incarnation it is sent to) on task `index`
    /// of the vertex: waits for a restarting task for at most the job's query timeout.
    pub(super) async fn ask(
        &self,
        index: u32,
        slot_is_empty: impl Fn() -> bool,
        make: impl Fn() -> QueryFn,
    ) -> Result<AnyReply> {
        let (entry, outside) = (self.entry, self.outside);
        let number = entry.first_task + index as usize;
        let mut endpoint = outside
            .endpoints
            .watch(number)
            .ok_or_else(|| Error::Internal(format!("'{}': no task {number}", entry.vertex)))?;
        let deadline = tokio::time::Instant::now() + outside.query_timeout;
        let unavailable = |reason: &str| Error::Unavailable {
            what: format!("task {index} of '{}'", entry.vertex),
            reason: reason.to_string(),
        };
        loop {
            if outside.has_ended() {
                return Err(outside.ended_error(format!("the address of '{}'", entry.vertex)));
            }
            let current = endpoint.borrow_and_update().clone();
            if let Some(recipient) = current {
                let sent = recipient.send(RunQuery(make()));
                match tokio::time::timeout_at(deadline, sent).await {
                    Ok(Ok(Err(Error::Unavailable { .. }))) | Ok(Err(_)) => {
                        // That incarnation failed or is gone: wait for the next one.
                    }
                    Ok(Ok(answer)) => return answer,
                    Err(_) => {
                        return Err(unavailable(&format!(
                            "no answer within {:?}",
                            outside.query_timeout
                        )))
                    }
                }
                if slot_is_empty() {
                    return Err(unavailable("the task failed while answering"));
                }
            }
            let ended = Outside::until_ended(outside.ended.clone());
            tokio::select! {
                changed = endpoint.changed() => if changed.is_err() {
                    return Err(Error::Internal("the job's endpoints were dropped".into()));
                },
                _ = ended => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(unavailable(&format!(
                        "the task is restarting and was not back within {:?}",
                        outside.query_timeout
                    )));
                }
            }
        }
    }

    /// Runs query `query` with payload `payload` (its key, or nothing) on task `index` through
    /// `run`, which gets the task's logic `L`.
    pub(super) async fn query<L, P, Q>(
        &self,
        index: u32,
        payload: P,
        run: impl FnOnce(&mut L, P) -> Result<Q::Reply> + Send + Clone + 'static,
    ) -> Result<Q::Reply>
    where
        L: 'static,
        P: Send + 'static,
        Q: Query,
    {
        let handler = self.handler::<Q>("query");
        let slot = Arc::new(Mutex::new(Some(payload)));
        let empty = || slot.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        let make = || query_fn::<L, P, Q::Reply>(Arc::clone(&slot), handler.clone(), run.clone());
        self.ask(index, empty, make).await.and_then(downcast)
    }

    /// Appends command `C`, addressed to `key`, to partition `partition` of the command log,
    /// and waits until it was applied (see [`OperatorRef::command`]).
    pub(super) async fn command<C: Command, K: serde::Serialize>(
        &self,
        key: K,
        partition: PartitionId,
        command: &C,
    ) -> Result<Applied<C::Reply>> {
        let (e, outside) = (self.entry, self.outside);
        let what = || format!("the address of '{}'", e.vertex);
        if outside.has_ended() {
            return Err(outside.ended_error(what()));
        }
        if !e.declared.contains(C::name()) {
            // Refused before it reaches the log: logged, it would fail on every replay.
            return Err(Error::NoSuchEndpoint {
                what: format!(
                    "actor operator '{}' takes no command '{}'",
                    e.vertex,
                    C::name()
                ),
                reason: "its `commands` does not declare it: add `commands.add::<..>()`".into(),
            });
        }
        let seq = e.seq.fetch_add(1, Ordering::Relaxed);
        let record = CommandRecord {
            run: e.replies.run(),
            seq,
            name: C::name().to_string(),
            key,
            payload: codec::encode(command, "command")?,
        };
        let payload = codec::encode(&record, "command record")?;
        let (applied, durable) = e.replies.register(seq);
        // A caller that drops this future before the append answers leaves no entry behind.
        let mut unregister = Unregister(Some((&e.replies, seq)));
        let offset = match e.writer.send(Append { partition, payload }).await {
            Ok(Ok(offset)) => offset,
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(outside.ended_error(what())),
        };
        unregister.0 = None;
        e.replies.positioned(seq, partition, offset);
        outside.endpoints.wake(e.sources.clone());
        let ended = Outside::until_ended(outside.ended.clone());
        let answer = tokio::select! {
            biased;
            r = applied => r.map_err(|_| Error::Internal("a command reply was dropped".into()))?,
            _ = ended => Err(outside.ended_error(what())),
        };
        let reply = answer.and_then(downcast::<C::Reply>)?;
        Ok(Applied {
            reply,
            durable,
            ended: outside.ended.clone(),
            ended_error: outside.ended_error(what()),
        })
    }
}

/// Checks that `outside` has an actor vertex `name` running `Op`, keyed or not as `keyed`
/// says, and returns its entry.
pub(super) fn lookup_entry<Op: 'static>(
    outside: &Arc<Outside>,
    name: &str,
    keyed: bool,
) -> Result<Arc<ActorEntry>> {
    let (kind, other, how) = if keyed {
        (
            "an actor operator",
            "non-keyed",
            "JobHandle::instance_operator",
        )
    } else {
        ("a non-keyed actor operator", "keyed", "JobHandle::operator")
    };
    let what = format!("{kind} '{name}'");
    let Some(entry) = outside.actors.get(name) else {
        let have = outside.actors.keys().collect();
        return Err(outside.no_such(what, name, kind, have));
    };
    let wrong = |reason: String| Error::NoSuchEndpoint {
        what: format!("job '{}' has no {what}", outside.job),
        reason,
    };
    if entry.keyed != keyed {
        return Err(wrong(format!(
            "'{name}' is a {other} actor operator: address it with {how}"
        )));
    }
    if entry.type_id != TypeId::of::<Op>() {
        return Err(wrong(format!(
            "it runs {}, not {}",
            entry.type_name,
            std::any::type_name::<Op>()
        )));
    }
    Ok(Arc::clone(entry))
}

impl<Op: ActorOperator> OperatorRef<Op> {
    /// The address of actor operator vertex `name`, checked to run `Op`.
    pub(crate) fn lookup(outside: &Arc<Outside>, name: &str) -> Result<OperatorRef<Op>> {
        Ok(OperatorRef {
            entry: lookup_entry::<Op>(outside, name, true)?,
            outside: Arc::clone(outside),
            _op: PhantomData,
        })
    }

    fn target(&self) -> Target<'_> {
        Target {
            entry: &self.entry,
            outside: &self.outside,
        }
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
        let index = self.task_of(&key);
        let run = |logic: &mut Logic<Op>, (key, query): (Op::Key, Q)| {
            logic.query(key, |op, ctx| op.0.query(query, ctx))
        };
        self.target()
            .query::<Logic<Op>, _, Q>(index, (key, query), run)
            .await
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
        let kg = key_group_for(&key, self.entry.max_parallelism);
        let partition = PartitionId(u32::from(kg.0) % self.entry.partitions);
        self.target().command(key, partition, &command).await
    }
}
