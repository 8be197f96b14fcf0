//! What travels between an application's addresses and the tasks of actor operators: the
//! command record in the command log and its decoded envelope, the table of command
//! handlers, query closures, the per-task endpoints queries are sent to, and the registry of
//! callers waiting for replies.
//!
//! A leaf of the actor module for the runtime: the keyed task logic and the task actor import
//! it; it imports neither.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::adapter::{ActorAdapter, InstanceAdapter};
use super::{Command, CommandHandler, InstanceCommandHandler};
use crate::codec;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::runtime::channel::Collector;
use crate::runtime::operator::{KeyedContext, OperatorContext};

/// A reply, type-erased on its way from a task to the caller, who knows its type.
pub(crate) type AnyReply = Box<dyn Any + Send>;

/// A command as stored in the command log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommandRecord<K> {
    /// The run (job handle) that sent it: replies go only to callers of this run.
    pub(crate) run: u64,
    /// Its number within the run.
    pub(crate) seq: u64,
    /// The command type's [`Command::name`].
    pub(crate) name: String,
    /// The key it is addressed to.
    pub(crate) key: K,
    /// The command, MessagePack-encoded.
    pub(crate) payload: Vec<u8>,
}

/// A command record read back by the command source: the record type of the stream from the
/// command source to the actor operator.
pub(crate) type CommandEnvelope<K> = CommandRecord<K>;

/// Applies one decoded command to the operator: its reply twice (for the applied and the
/// durable answer).
pub(crate) type CommandFn<K, O, Op> = Arc<
    dyn Fn(
            &[u8],
            &mut Op,
            &mut KeyedContext<'_, K>,
            &mut Collector<O>,
        ) -> Result<(AnyReply, AnyReply)>
        + Send
        + Sync,
>;

/// Applies one decoded command to a non-keyed operator (its operator state): as
/// [`CommandFn`].
pub(crate) type InstanceCommandFn<O, Op> = Arc<
    dyn Fn(
            &[u8],
            &mut Op,
            &mut OperatorContext<'_>,
            &mut Collector<O>,
        ) -> Result<(AnyReply, AnyReply)>
        + Send
        + Sync,
>;

/// The command types an operator declared, and the errors found while declaring them.
pub(crate) struct Declared<F> {
    pub(crate) handlers: HashMap<String, F>,
    pub(crate) errors: Vec<String>,
}

impl<F> Declared<F> {
    pub(crate) fn new() -> Self {
        Declared {
            handlers: HashMap::new(),
            errors: Vec::new(),
        }
    }

    /// Declares the handler `f` of command `name` on operator type `op`.
    pub(crate) fn insert(&mut self, op: &str, name: &str, f: F) {
        if self.handlers.contains_key(name) {
            self.errors.push(format!(
                "two command types of operator {op} are named '{name}'"
            ));
        }
        self.handlers.insert(name.to_string(), f);
    }
}

impl<F> std::fmt::Debug for Declared<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("names", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The handler of command type `C` on operator `A`.
pub(crate) fn command_fn<A, C>() -> CommandFn<A::Key, A::Out, ActorAdapter<A>>
where
    A: CommandHandler<C>,
    C: Command,
{
    Arc::new(|payload, op, ctx, out| {
        let command: C = codec::decode(payload, "command")?;
        let reply = <A as CommandHandler<C>>::command(&mut op.0, command, ctx, out)?;
        Ok(twice(reply))
    })
}

/// A command's reply, once for the applied and once for the durable answer.
fn twice<R: Clone + Send + 'static>(reply: R) -> (AnyReply, AnyReply) {
    (Box::new(reply.clone()), Box::new(reply))
}

/// The handler of command type `C` on non-keyed operator `A`.
pub(crate) fn instance_command_fn<A, C>() -> InstanceCommandFn<A::Out, InstanceAdapter<A>>
where
    A: InstanceCommandHandler<C>,
    C: Command,
{
    Arc::new(|payload, op, ctx, out| {
        let command: C = codec::decode(payload, "command")?;
        let reply = <A as InstanceCommandHandler<C>>::command(&mut op.0, command, ctx, out)?;
        Ok(twice(reply))
    })
}

/// What a task needs to apply commands: the handlers (of type `F`, a [`CommandFn`] or an
/// [`InstanceCommandFn`]) and where replies go.
pub(crate) struct CommandRoute<F> {
    pub(crate) vertex: String,
    pub(crate) handlers: Arc<HashMap<String, F>>,
    pub(crate) replies: Arc<Replies>,
}

impl<F> Clone for CommandRoute<F> {
    fn clone(&self) -> Self {
        CommandRoute {
            vertex: self.vertex.clone(),
            handlers: Arc::clone(&self.handlers),
            replies: Arc::clone(&self.replies),
        }
    }
}

impl<F> CommandRoute<F> {
    /// The answer to a command named `name` that has no handler.
    pub(crate) fn missing(&self, name: &str) -> Error {
        Error::NoSuchEndpoint {
            what: format!("no command '{name}'"),
            reason: format!(
                "operator '{}' declares no command of that name",
                self.vertex
            ),
        }
    }

    /// Answers the caller of command `seq` of run `run`, named `name`, with `result`.
    pub(crate) fn answer(
        &self,
        run: u64,
        seq: u64,
        name: &str,
        result: Result<(AnyReply, AnyReply)>,
    ) {
        let answer = result.map_err(|e| Error::HandlerFailed {
            handler: format!("command {name} on '{}'", self.vertex),
            source: Box::new(e),
        });
        self.replies.applied(run, seq, answer);
    }
}

/// A query, run by the task on its logic (which the closure downcasts).
pub(crate) type QueryFn = Box<dyn FnOnce(&mut dyn Any) -> Result<AnyReply> + Send>;

/// Runs a query on a task, between two batches.
#[derive(Message)]
#[rtype(result = "Result<AnyReply>")]
pub(crate) struct RunQuery(pub(crate) QueryFn);

/// Where each task of the job can be asked a query now: published by each task actor as it is
/// created, replaced by the next incarnation's.
/// A source's pacing sleeps on its waker while idle: an append to a log the job owns wakes
/// the sources reading it at once.
#[derive(Debug)]
pub(crate) struct Endpoints {
    slots: Vec<watch::Sender<Option<Recipient<RunQuery>>>>,
    wakers: Vec<Arc<tokio::sync::Notify>>,
}

impl Endpoints {
    pub(crate) fn new(tasks: usize) -> Endpoints {
        Endpoints {
            slots: (0..tasks).map(|_| watch::channel(None).0).collect(),
            wakers: (0..tasks).map(|_| Arc::default()).collect(),
        }
    }

    /// Task `number`'s waker.
    pub(crate) fn waker(&self, number: usize) -> Arc<tokio::sync::Notify> {
        self.wakers.get(number).cloned().unwrap_or_default()
    }

    /// Wakes tasks `tasks` if their pacing sleeps (or makes their next sleep end at once).
    pub(crate) fn wake(&self, tasks: std::ops::Range<usize>) {
        for w in self.wakers.get(tasks).into_iter().flatten() {
            w.notify_one();
        }
    }

    /// Task `number`'s newest incarnation takes queries at `recipient`.
    pub(crate) fn publish(&self, number: usize, recipient: Recipient<RunQuery>) {
        if let Some(slot) = self.slots.get(number) {
            slot.send_replace(Some(recipient));
        }
    }

    /// Task `number`'s endpoint, watched for the next incarnation.
    pub(crate) fn watch(
        &self,
        number: usize,
    ) -> Option<watch::Receiver<Option<Recipient<RunQuery>>>> {
        self.slots.get(number).map(|s| s.subscribe())
    }
}

type ReplyTx = oneshot::Sender<Result<AnyReply>>;
/// A caller's two answers: when the command was applied, and when it is durable.
pub(crate) type ReplyRx = (
    oneshot::Receiver<Result<AnyReply>>,
    oneshot::Receiver<Result<AnyReply>>,
);

#[derive(Default)]
struct Pending {
    applied: Option<ReplyTx>,
    durable: Option<ReplyTx>,
    /// The reply of the latest application (a replay after a restore replaces it).
    last: Option<Result<AnyReply>>,
    /// Where the command is in the command log, once the append has answered.
    position: Option<(PartitionId, LogOffset)>,
}

#[derive(Default)]
struct RepliesInner {
    pending: HashMap<u64, Pending>,
    /// Per partition of the command log: every command below this offset is in a complete
    /// checkpoint.
    durable: HashMap<PartitionId, LogOffset>,
}

/// The callers of one run waiting for command replies.
pub(crate) struct Replies {
    run: u64,
    inner: Mutex<RepliesInner>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies").field("run", &self.run).finish()
    }
}

impl Replies {
    pub(crate) fn new(run: u64) -> Replies {
        Replies {
            run,
            inner: Mutex::new(RepliesInner::default()),
        }
    }

    pub(crate) fn run(&self) -> u64 {
        self.run
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, RepliesInner> {
        // The lock guards plain maps: a panic while holding it leaves them usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A caller waits for command `seq`.
    pub(crate) fn register(&self, seq: u64) -> ReplyRx {
        let (atx, arx) = oneshot::channel();
        let (dtx, drx) = oneshot::channel();
        self.inner().pending.insert(
            seq,
            Pending {
                applied: Some(atx),
                durable: Some(dtx),
                ..Pending::default()
            },
        );
        (arx, drx)
    }

    /// Command `seq` never reached the log.
    pub(crate) fn forget(&self, seq: u64) {
        self.inner().pending.remove(&seq);
    }

    /// Command `seq` is at `offset` of `partition`.
    pub(crate) fn positioned(&self, seq: u64, partition: PartitionId, offset: LogOffset) {
        let mut inner = self.inner();
        let durable = inner.durable.get(&partition).copied();
        if let Some(p) = inner.pending.get_mut(&seq) {
            p.position = Some((partition, offset));
        }
        if durable.is_some_and(|d| offset < d) {
            resolve_durable(&mut inner, seq);
        }
    }

    /// A task applied command `seq` of run `run` with `result`.
    pub(crate) fn applied(&self, run: u64, seq: u64, result: Result<(AnyReply, AnyReply)>) {
        if run != self.run {
            return; // sent by an earlier run: nobody here waits for it
        }
        let mut inner = self.inner();
        let Some(p) = inner.pending.get_mut(&seq) else {
            return;
        };
        let (now, kept) = match result {
            Ok((a, b)) => (Ok(a), Ok(b)),
            Err(e) => (Err(e.clone()), Err(e)),
        };
        p.last = Some(kept);
        if let Some(tx) = p.applied.take() {
            let _ = tx.send(now);
        }
    }

    /// Every command below `offsets` (per partition) is in a complete checkpoint.
    pub(crate) fn durable_upto(&self, offsets: &[(PartitionId, LogOffset)]) {
        let mut inner = self.inner();
        for &(p, o) in offsets {
            let d = inner.durable.entry(p).or_insert(o);
            *d = (*d).max(o);
        }
        let due: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(_, p)| {
                p.position
                    .is_some_and(|(part, off)| inner.durable.get(&part).is_some_and(|d| off < *d))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            resolve_durable(&mut inner, seq);
        }
    }

    /// How many callers wait (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.inner().pending.len()
    }
}

fn resolve_durable(inner: &mut RepliesInner, seq: u64) {
    let Some(mut p) = inner.pending.remove(&seq) else {
        return;
    };
    let answer = p.last.take().unwrap_or_else(|| {
        Err(Error::Internal(format!(
            "command {seq} is in a complete checkpoint but was never applied"
        )))
    });
    if let Some(tx) = p.applied.take() {
        let _ = tx.send(Err(Error::Internal(format!(
            "command {seq} became durable before its application was reported"
        ))));
    }
    if let Some(tx) = p.durable.take() {
        let _ = tx.send(answer);
    }
}

/// Called by a source with the offsets it had read when a checkpoint completed (`true`), or
/// that it restored from a complete checkpoint (`false`): everything below them is in a
/// complete checkpoint.
pub(crate) type Progress = Arc<dyn Fn(ProgressKind, &[(PartitionId, LogOffset)]) + Send + Sync>;

/// What a source's [`Progress`] is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressKind {
    /// The source restored these offsets.
    Restored,
    /// A checkpoint completed with the source at these offsets.
    Completed,
    /// A savepoint completed with the source at these offsets: the log keeps them for good.
    Savepoint,
}

/// Retention of a log the job owns (commands, ingress), or of a user log whose source trims
/// it: records are dropped once no retained checkpoint or savepoint needs them, that is below
/// the offsets of the oldest of the last `keep` checkpoints completed in this process and
/// below the oldest savepoint's (in the storage when the job started, or completed since).
/// After a restart nothing is dropped until `keep` checkpoints have completed again.
#[derive(Debug)]
pub(crate) struct Trimmer {
    log: Arc<dyn ReplayableLog>,
    keep: std::sync::atomic::AtomicUsize,
    history: Mutex<HashMap<PartitionId, VecDeque<LogOffset>>>,
    /// Per partition, the oldest offset a savepoint needs: never trimmed above.
    floor: Mutex<HashMap<PartitionId, LogOffset>>,
}

impl Trimmer {
    pub(crate) fn new(log: Arc<dyn ReplayableLog>) -> Trimmer {
        Trimmer {
            log,
            keep: std::sync::atomic::AtomicUsize::new(3),
            history: Mutex::new(HashMap::new()),
            floor: Mutex::new(HashMap::new()),
        }
    }

    /// A savepoint needs the log from `offsets` on: nothing at or above them is ever trimmed.
    pub(crate) fn pin(&self, offsets: &[(PartitionId, LogOffset)]) {
        let mut floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
        for &(p, o) in offsets {
            let f = floor.entry(p).or_insert(o);
            *f = (*f).min(o);
        }
    }

    /// Tells the trimmer a source's progress.
    pub(crate) fn progress(&self, kind: ProgressKind, offsets: &[(PartitionId, LogOffset)]) {
        match kind {
            ProgressKind::Restored => {}
            ProgressKind::Completed => self.completed(offsets),
            ProgressKind::Savepoint => {
                self.pin(offsets);
                self.completed(offsets);
            }
        }
    }

    /// Keeps what the newest `keep` complete checkpoints need (the storage's retention).
    pub(crate) fn set_keep(&self, keep: usize) {
        self.keep
            .store(keep.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// A checkpoint completed with the source at `offsets`.
    pub(crate) fn completed(&self, offsets: &[(PartitionId, LogOffset)]) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        for &(p, o) in offsets {
            let h = history.entry(p).or_default();
            h.push_back(o);
            if h.len() > self.keep.load(std::sync::atomic::Ordering::Relaxed) {
                h.pop_front();
                if let Some(&oldest) = h.front() {
                    let floor = self.floor.lock().unwrap_or_else(|e| e.into_inner());
                    let below = floor.get(&p).map_or(oldest, |f| oldest.min(*f));
                    drop(floor);
                    if let Err(e) = self.log.truncate_before(p, below) {
                        tracing::warn!(partition = %p, error = %e, "trimming a job-owned log failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(v: u32) -> Result<(AnyReply, AnyReply)> {
        Ok((Box::new(v), Box::new(v)))
    }

    fn value(r: Result<AnyReply>) -> u32 {
        *r.expect("reply").downcast::<u32>().expect("u32")
    }

    #[test]
    fn the_durable_reply_is_that_of_the_last_application_and_comes_once_its_offset_is_covered() {
        let replies = Replies::new(7);
        let (mut applied, mut durable) = replies.register(1);
        replies.positioned(1, PartitionId(0), LogOffset(10));
        replies.applied(7, 1, reply(1));
        assert_eq!(value(applied.try_recv().expect("applied")), 1);
        // A replay after a restore applies it again, with another reply.
        replies.applied(7, 1, reply(2));
        replies.durable_upto(&[(PartitionId(0), LogOffset(10))]);
        assert!(durable.try_recv().is_err(), "offset 10 is not below 10");
        replies.durable_upto(&[(PartitionId(1), LogOffset(99))]);
        assert!(durable.try_recv().is_err(), "another partition");
        replies.durable_upto(&[(PartitionId(0), LogOffset(11))]);
        assert_eq!(value(durable.try_recv().expect("durable")), 2);
        assert_eq!(replies.waiting(), 0);
    }

    #[test]
    fn a_command_positioned_after_its_checkpoint_completed_is_durable_at_once() {
        let replies = Replies::new(7);
        let (_applied, mut durable) = replies.register(3);
        replies.applied(7, 3, reply(5));
        replies.durable_upto(&[(PartitionId(0), LogOffset(50))]);
        replies.positioned(3, PartitionId(0), LogOffset(49));
        assert_eq!(value(durable.try_recv().expect("durable")), 5);
    }

    #[test]
    fn a_savepoint_keeps_its_records_in_a_trimmed_log_for_good() {
        let fifty = || {
            let log: Arc<dyn ReplayableLog> = Arc::new(crate::log::MemoryLog::new(1));
            for i in 0..50u8 {
                log.append(PartitionId(0), &[i]).expect("append");
            }
            log
        };
        let start =
            |log: &Arc<dyn ReplayableLog>| log.start_offset(PartitionId(0)).expect("start").0;
        let log = fifty();
        let trimmer = Trimmer::new(Arc::clone(&log));
        trimmer.set_keep(1);
        trimmer.progress(ProgressKind::Completed, &[(PartitionId(0), LogOffset(5))]);
        trimmer.progress(ProgressKind::Savepoint, &[(PartitionId(0), LogOffset(10))]);
        assert_eq!(
            start(&log),
            10,
            "trimmed below the newest checkpoint, the savepoint"
        );
        for at in [20, 30, 40] {
            trimmer.progress(ProgressKind::Completed, &[(PartitionId(0), LogOffset(at))]);
            assert_eq!(start(&log), 10, "never above the savepoint's offset");
        }
        // A savepoint found in the storage when the job starts pins its offsets the same way.
        let log = fifty();
        let trimmer = Trimmer::new(Arc::clone(&log));
        trimmer.set_keep(1);
        trimmer.pin(&[(PartitionId(0), LogOffset(12))]);
        trimmer.completed(&[(PartitionId(0), LogOffset(45))]);
        trimmer.completed(&[(PartitionId(0), LogOffset(48))]);
        assert_eq!(start(&log), 12);
    }

    #[test]
    fn a_log_is_trimmed_below_the_oldest_retained_checkpoint_and_never_above_it() {
        let log: Arc<dyn ReplayableLog> = Arc::new(crate::log::MemoryLog::new(1));
        for i in 0..50u8 {
            log.append(PartitionId(0), &[i]).expect("append");
        }
        let trimmer = Trimmer::new(Arc::clone(&log));
        trimmer.set_keep(3);
        let start = || log.start_offset(PartitionId(0)).expect("start").0;
        for (i, at) in [10u64, 20, 30].into_iter().enumerate() {
            trimmer.completed(&[(PartitionId(0), LogOffset(at))]);
            assert_eq!(
                start(),
                0,
                "checkpoint {i}: fewer than 3 retained, nothing trimmed"
            );
        }
        // Four completed, three retained (20, 30, 40): the oldest retained needs offset 20.
        trimmer.completed(&[(PartitionId(0), LogOffset(40))]);
        assert_eq!(start(), 20);
        trimmer.completed(&[(PartitionId(0), LogOffset(45))]);
        assert_eq!(start(), 30);
    }

    #[test]
    fn replies_of_another_run_answer_nobody() {
        let replies = Replies::new(7);
        let (mut applied, _durable) = replies.register(1);
        replies.applied(8, 1, reply(1));
        assert!(applied.try_recv().is_err());
        assert_eq!(replies.waiting(), 1);
    }
}
