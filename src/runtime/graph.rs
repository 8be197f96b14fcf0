//! Building a job: [`JobBuilder`], [`Stream`], [`KeyedStream`], and [`Job::start`], which
//! wires channels, places task actors on arbiters and hands the job to its master.
//!
//! The builder is append-only: an operator can only consume streams that already exist, so a
//! job graph is acyclic by construction, and keyed operators exist only on a [`KeyedStream`]
//! (made by `key_by`), so a keyed operator without a key is a compile error. What the types
//! cannot rule out is checked by [`JobBuilder::build`]: names, parallelism, forward edges between
//! different parallelisms, streams nobody consumes, jobs without a source or a sink.
//!
//! A keyed operator on a stream that was not keyed does not compile:
//!
//! ```compile_fail
//! use std::sync::Arc;
//! use snapflow::prelude::*;
//! let job = JobBuilder::new("no-key");
//! let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
//! job.source("src", LogSource::<u64>::msgpack(log))
//!     .reduce("sum", |a, b| a + b) // no `reduce` on a Stream: key it first
//!     .sink("out", snapflow::CollectSink::new());
//! ```
//!
//! while the same job keyed first does:
//!
//! ```
//! use std::sync::Arc;
//! use snapflow::prelude::*;
//! let job = JobBuilder::new("keyed");
//! job.checkpoint_in_memory(); // this doctest keeps nothing
//! let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
//! job.source("src", LogSource::<u64>::msgpack(log))
//!     .key_by(|x: &u64| *x % 10)
//!     .reduce("sum", |a, b| a + b)
//!     .sink("out", snapflow::CollectSink::new());
//! job.build().expect("valid");
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde::de::DeserializeOwned;

use super::actor::wire::{CommandEnvelope, CommandRoute, Declared, Progress, Replies, Trimmer};
use super::actor::{
    ActorAdapter, ActorEntry, ActorOperator, Commands, IngressEntry, InstanceAdapter,
    InstanceCommands, InstanceOperator, Outside,
};
use super::async_io::{AsyncFunction, AsyncOptions};
use super::channel::Collector;
use super::config::{JobConfig, Threads};
use super::events::JobEvent;
use super::handle::JobHandle;
use super::logic::{
    ActorLogic, AsyncLogic, DeadLetterSpec, Decoder, EdgeKind, EventTimeSpec, InstanceLogic,
    KeyGroupFn, KeyedLogic, OperatorLogic, RestoreState, SinkLogic, SourceLogic, TaskLogic,
};
use super::metrics::JobMetrics;
use super::operator::{Data, FlatMapOp, KeyedOperator, Operator, ReduceOp};
use super::root::JobRoot;
use super::topology::{LogicFactory, Role, Topology, VertexSpec};
use crate::chaos::ChaosMonkey;
use crate::checkpoint::{
    CheckpointId, CheckpointStorage, LocalCheckpointStorage, MemoryCheckpointStorage,
};
use crate::codec;
use crate::error::{Error, Result};
use crate::log::ReplayableLog;
use crate::runtime::time::{Timestamp, WatermarkStrategy};
use crate::sink::TwoPhaseCommitSink;
use crate::state::{key_group_for, StateKey, StateValue};
use crate::storage::validate_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ship {
    /// Forward when both sides have the same parallelism, rebalance otherwise.
    Default,
    Forward,
    Rebalance,
    Broadcast,
    Hash,
    /// A non-keyed actor operator's commands: to the task whose index is the command's key.
    ByIndex,
}

#[derive(Clone)]
struct EdgeDef {
    from: usize,
    ship: Ship,
    key_group: Option<Arc<dyn Any + Send + Sync>>,
}

struct VertexDef {
    name: String,
    /// The stable uid set with `Stream::uid` (the name when `None`).
    uid: Option<String>,
    parallelism: Option<u32>,
    role: Role,
    inputs: Vec<EdgeDef>,
    consumers: usize,
    factory: LogicFactory,
    log: Option<Arc<dyn ReplayableLog>>,
}

struct GraphDef {
    name: String,
    config: JobConfig,
    storage: Option<Arc<dyn CheckpointStorage>>,
    /// Where the default storage keeps checkpoints ([`DEFAULT_CHECKPOINT_DIR`] when `None`).
    checkpoint_root: Option<std::path::PathBuf>,
    vertices: Vec<VertexDef>,
    errors: Vec<String>,
    events: Option<Recipient<JobEvent>>,
    chaos: Option<ChaosMonkey>,
    /// The run id of the job's command records (see `actor::wire::CommandRecord`).
    run: u64,
    owned: Vec<OwnedLog>,
    /// The retention of user logs whose sources trim them (`LogSource::trim_log`).
    trimmers: Vec<(usize, Arc<Trimmer>)>,
}

/// A log the job owns (an actor operator's command log, an ingress): the job appends to it
/// for the application and trims it.
struct OwnedLog {
    /// The vertex the application addresses (the actor operator, or the ingress source).
    vertex: usize,
    /// The source vertex reading the log.
    source: usize,
    type_id: std::any::TypeId,
    type_name: &'static str,
    log: Arc<dyn ReplayableLog>,
    trimmer: Arc<Trimmer>,
    /// For an actor operator: its callers' replies.
    replies: Option<Arc<Replies>>,
    /// For an actor operator: the command names it declared.
    declared: Arc<HashSet<String>>,
    /// For an actor operator: keyed, or addressed by instance index.
    keyed: bool,
}

/// The value a vertex's tasks are cloned from (an operator, a sink, an async function): every
/// task, and every restart of one, gets a fresh clone.
struct Prototype<T>(Mutex<T>);

impl<T: Clone> Prototype<T> {
    fn new(value: T) -> Self {
        Prototype(Mutex::new(value))
    }

    fn get(&self, what: &str) -> Result<T> {
        self.0
            .lock()
            .map(|v| v.clone())
            .map_err(|_| Error::Internal(format!("{what} prototype poisoned")))
    }
}

/// A run id no other job handle of this or another process is likely to share.
fn new_run_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64's finaliser spreads the bits.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A source reading a [`ReplayableLog`]: its partitions are spread over the source's tasks
/// (partition `j` to task `j % parallelism` on a fresh start; restored from the checkpoint's
/// offsets after a restart).
pub struct LogSource<T> {
    log: Arc<dyn ReplayableLog>,
    decode: Decoder<T>,
    bounded: bool,
    event_time: Option<EventTimeSpec<T>>,
    progress: Option<Progress>,
    timeless: bool,
    trim: bool,
}

impl<T> std::fmt::Debug for LogSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSource")
            .field("log", &self.log)
            .field("bounded", &self.bounded)
            .finish()
    }
}

impl<T: DeserializeOwned> LogSource<T> {
    /// A source of MessagePack-encoded records (as written by [`TypedLog`](crate::TypedLog)
    /// or `Append::encode`). Unbounded: it follows the log as it grows.
    pub fn msgpack(log: Arc<dyn ReplayableLog>) -> Self {
        LogSource {
            log,
            decode: Arc::new(|bytes: &[u8]| codec::decode(bytes, "log record")),
            bounded: false,
            event_time: None,
            progress: None,
            timeless: false,
            trim: false,
        }
    }
}

impl<T> LogSource<T> {
    /// A source decoding each record's bytes with `decode`. Unbounded.
    pub fn with_decoder(
        log: Arc<dyn ReplayableLog>,
        decode: impl Fn(&[u8]) -> Result<T> + Send + Sync + 'static,
    ) -> Self {
        LogSource {
            log,
            decode: Arc::new(decode),
            bounded: false,
            event_time: None,
            progress: None,
            timeless: false,
            trim: false,
        }
    }

    /// Makes the source bounded: it reads up to the end offsets the log has when the job
    /// starts, then the job takes a final checkpoint and ends.
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
    }

    /// Lets the job trim the log ([`ReplayableLog::truncate_before`], which for a
    /// [`FileLog`](crate::FileLog) deletes whole segments from the disk) below the offsets the
    /// oldest retained checkpoint needs: the oldest of the last
    /// [`CheckpointStorage::retained`] checkpoints completed in this process. Never above it,
    /// and nothing after a restart until that many checkpoints have completed again. Opt-in,
    /// since a log may be shared with other readers (another job, a consumer of its own): only
    /// turn it on for a log this job alone reads.
    pub fn trim_log(mut self) -> Self {
        self.trim = true;
        self
    }

    /// Gives the source event time: `timestamp` reads a record's time in milliseconds, and
    /// `strategy` turns the largest time seen per partition into the watermark the source
    /// emits (see [`crate::runtime::time`]).
    pub fn event_time(
        mut self,
        timestamp: impl Fn(&T) -> Timestamp + Send + Sync + 'static,
        strategy: WatermarkStrategy,
    ) -> Self {
        self.event_time = Some(EventTimeSpec {
            timestamp: Arc::new(timestamp),
            strategy,
        });
        self
    }
}

/// Builds a job. See the module documentation.
pub struct JobBuilder {
    graph: Rc<RefCell<GraphDef>>,
}

impl std::fmt::Debug for JobBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.graph.borrow();
        f.debug_struct("JobBuilder")
            .field("name", &g.name)
            .field(
                "vertices",
                &g.vertices
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A stream of records of type `T`, produced by one vertex or a union of several.
pub struct Stream<T> {
    graph: Rc<RefCell<GraphDef>>,
    inputs: Vec<EdgeDef>,
    vertex: Option<usize>,
    dead_letter: Option<DeadLetterSpec<T>>,
    _t: PhantomData<fn() -> T>,
}

/// A stream can feed several operators: each clone adds an output edge to the vertices that
/// produce it, and every record goes down every edge.
impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Stream {
            graph: Rc::clone(&self.graph),
            inputs: self.inputs.clone(),
            vertex: self.vertex,
            dead_letter: self.dead_letter.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> Stream<T> {
    /// The stream of records vertex `v` produces, shipped on the default (forward or
    /// rebalance) edge until the caller re-partitions it.
    fn from_vertex(graph: &Rc<RefCell<GraphDef>>, v: usize) -> Self {
        Stream {
            graph: Rc::clone(graph),
            inputs: vec![EdgeDef {
                from: v,
                ship: Ship::Default,
                key_group: None,
            }],
            vertex: Some(v),
            dead_letter: None,
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field(
                "inputs",
                &self.inputs.iter().map(|e| e.from).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A stream partitioned by key: records with the same key go to the same task, whose keyed
/// state is scoped to that key.
pub struct KeyedStream<K, T> {
    stream: Stream<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K, T> std::fmt::Debug for KeyedStream<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream")
            .field("stream", &self.stream)
            .finish()
    }
}

impl JobBuilder {
    /// A job named `name` (a safe file name: it names the job's checkpoint directory) with the
    /// default configuration. Unless told otherwise ([`checkpoint_storage`](Self::checkpoint_storage),
    /// [`checkpoint_dir`](Self::checkpoint_dir), [`checkpoint_in_memory`](Self::checkpoint_in_memory))
    /// it checkpoints to `./snapflow/<name>/` and, by [`StartFrom::Latest`](crate::StartFrom),
    /// resumes from there when started again.
    pub fn new(name: &str) -> JobBuilder {
        JobBuilder::with_config(name, JobConfig::default())
    }

    /// A job named `name` with `config`.
    pub fn with_config(name: &str, config: JobConfig) -> JobBuilder {
        JobBuilder {
            graph: Rc::new(RefCell::new(GraphDef {
                name: name.to_string(),
                config,
                storage: None,
                checkpoint_root: None,
                vertices: Vec::new(),
                errors: Vec::new(),
                events: None,
                chaos: None,
                run: new_run_id(),
                owned: Vec::new(),
                trimmers: Vec::new(),
            })),
        }
    }

    /// Where checkpoints go. Default: a [`LocalCheckpointStorage`] under
    /// [`DEFAULT_CHECKPOINT_DIR`] (`./snapflow/<job>/`, created as needed; see
    /// [`checkpoint_dir`](Self::checkpoint_dir)), so a job's state survives the process.
    pub fn checkpoint_storage(&self, storage: Arc<dyn CheckpointStorage>) -> &Self {
        self.graph.borrow_mut().storage = Some(storage);
        self
    }

    /// Keeps checkpoints in a [`LocalCheckpointStorage`] under `root` (in `root/<job>/`) instead
    /// of [`DEFAULT_CHECKPOINT_DIR`]. The directory is created when the job is built.
    pub fn checkpoint_dir(&self, root: impl AsRef<std::path::Path>) -> &Self {
        let mut g = self.graph.borrow_mut();
        g.checkpoint_root = Some(root.as_ref().to_path_buf());
        g.storage = None;
        self
    }

    /// Keeps checkpoints in memory ([`MemoryCheckpointStorage`]): they are lost with the
    /// process, so a crash loses all state. For tests and throw-away runs.
    pub fn checkpoint_in_memory(&self) -> &Self {
        let name = self.graph.borrow().name.clone();
        match MemoryCheckpointStorage::new(&name) {
            Ok(s) => self.graph.borrow_mut().storage = Some(Arc::new(s)),
            Err(e) => self.graph.borrow_mut().errors.push(e.to_string()),
        }
        self
    }

    /// Sends every lifecycle event of the job to `recipient`.
    pub fn events(&self, recipient: Recipient<JobEvent>) -> &Self {
        self.graph.borrow_mut().events = Some(recipient);
        self
    }

    /// Attaches a chaos monkey that kills the job's actors on its seeded schedule.
    pub fn chaos(&self, monkey: ChaosMonkey) -> &Self {
        self.graph.borrow_mut().chaos = Some(monkey);
        self
    }

    /// Adds a source vertex reading `source`.
    pub fn source<T: Data>(&self, name: &str, source: LogSource<T>) -> Stream<T> {
        let LogSource {
            log,
            decode,
            bounded,
            event_time,
            mut progress,
            timeless,
            trim,
        } = source;
        if trim {
            let trimmer = Arc::new(Trimmer::new(Arc::clone(&log)));
            let (t2, before) = (Arc::clone(&trimmer), progress.take());
            progress = Some(Arc::new(move |kind, offsets| {
                if let Some(p) = &before {
                    p(kind, offsets);
                }
                t2.progress(kind, offsets);
            }));
            let mut g = self.graph.borrow_mut();
            // The vertex this source is about to become.
            let v = g.vertices.len();
            g.trimmers.push((v, trimmer));
        }
        let log2 = Arc::clone(&log);
        let factory: LogicFactory = Arc::new(move |p| {
            Ok(Box::new(
                SourceLogic::new(
                    Arc::clone(&log2),
                    Arc::clone(&decode),
                    event_time.clone(),
                    p,
                )?
                .with_progress(progress.clone())
                .timeless(timeless),
            ) as Box<dyn TaskLogic>)
        });
        let v = add_vertex(
            &self.graph,
            name,
            Role::Source { bounded },
            Vec::new(),
            factory,
            Some(log),
        );
        Stream::from_vertex(&self.graph, v)
    }

    /// Adds an ingress: a source reading `log`, a log the job owns, to which the application
    /// appends typed records through [`JobHandle::ingress`] once the job runs (see
    /// [`Ingress`](crate::runtime::Ingress)). The job trims `log` once no retained checkpoint
    /// needs its records (so a run that starts over from nothing finds only the newer ones).
    pub fn ingress<T>(&self, name: &str, log: Arc<dyn ReplayableLog>) -> Stream<T>
    where
        T: Data + serde::Serialize + DeserializeOwned,
    {
        let trimmer = Arc::new(Trimmer::new(Arc::clone(&log)));
        let t2 = Arc::clone(&trimmer);
        let mut source = LogSource::<T>::msgpack(Arc::clone(&log));
        source.progress = Some(Arc::new(move |kind, offsets| t2.progress(kind, offsets)));
        let stream = self.source(name, source);
        let v = self.graph.borrow().vertices.len() - 1;
        self.graph.borrow_mut().owned.push(OwnedLog {
            vertex: v,
            source: v,
            type_id: std::any::TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            log,
            trimmer,
            replies: None,
            declared: Arc::default(),
            keyed: false,
        });
        stream
    }

    /// Checks the graph and returns the job, ready to start.
    pub fn build(self) -> Result<Job> {
        let mut g = self.graph.borrow_mut();
        let config = g.config.clone();
        config.validate()?;
        validate_name("job", &g.name)?;
        if let Some(e) = g.errors.first() {
            return Err(Error::InvalidGraph(e.clone()));
        }
        check_names(&g.vertices)?;
        let max = config.max_parallelism;
        for v in &g.vertices {
            let p = v.parallelism.unwrap_or(config.parallelism);
            if p == 0 || p > max {
                return Err(Error::InvalidParallelism {
                    parallelism: p,
                    max_parallelism: max,
                });
            }
            if v.role != Role::Sink && v.consumers == 0 {
                return Err(Error::InvalidGraph(format!(
                    "the stream of '{}' is never consumed (dangling); end it with a sink",
                    v.name
                )));
            }
        }
        for v in &g.vertices {
            let p = v.parallelism.unwrap_or(config.parallelism);
            for e in &v.inputs {
                let from = &g.vertices[e.from];
                let pf = from.parallelism.unwrap_or(config.parallelism);
                if e.ship == Ship::Forward && pf != p {
                    return Err(Error::InvalidGraph(format!(
                        "forward edge from '{}' (parallelism {pf}) to '{}' (parallelism {p}): forward needs equal parallelism",
                        from.name, v.name
                    )));
                }
            }
        }
        if !g
            .vertices
            .iter()
            .any(|v| matches!(v.role, Role::Source { .. }))
        {
            return Err(Error::InvalidGraph("the job has no source".into()));
        }
        if !g.vertices.iter().any(|v| v.role == Role::Sink) {
            return Err(Error::InvalidGraph("the job has no sink".into()));
        }
        let storage = match g.storage.take() {
            Some(s) => s,
            None => default_storage(&g)?,
        };
        if storage.job() != g.name {
            return Err(Error::Config(format!(
                "the checkpoint storage belongs to job '{}', not '{}'",
                storage.job(),
                g.name
            )));
        }
        check_owned(&g, &config, storage.as_ref())?;
        Ok(Job {
            name: g.name.clone(),
            config,
            storage,
            trimmers: g
                .trimmers
                .iter()
                .cloned()
                .chain(g.owned.iter().map(|o| (o.source, Arc::clone(&o.trimmer))))
                .collect(),
            vertices: std::mem::take(&mut g.vertices),
            events: g.events.take(),
            chaos: g.chaos.take(),
            owned: std::mem::take(&mut g.owned),
        })
    }
}

/// Refuses unsafe or repeated vertex names and uids.
fn check_names(vertices: &[VertexDef]) -> Result<()> {
    let mut names = HashSet::new();
    let mut uids = HashSet::new();
    for v in vertices {
        validate_name("vertex", &v.name)?;
        let uid = v.uid.as_deref().unwrap_or(&v.name);
        validate_name("vertex uid", uid)?;
        if !uids.insert(uid.to_string()) {
            return Err(Error::InvalidGraph(format!(
                "two vertices have the uid '{uid}' (a uid defaults to the vertex's name)"
            )));
        }
        if !names.insert(v.name.clone()) {
            return Err(Error::InvalidGraph(format!(
                "two vertices are named '{}'",
                v.name
            )));
        }
    }
    Ok(())
}

/// The storage of a job that configured none: a local directory (under `checkpoint_dir`'s
/// root, or [`DEFAULT_CHECKPOINT_DIR`]), created as needed.
fn default_storage(g: &GraphDef) -> Result<Arc<dyn CheckpointStorage>> {
    let root = g
        .checkpoint_root
        .clone()
        .unwrap_or_else(|| DEFAULT_CHECKPOINT_DIR.into());
    let local = LocalCheckpointStorage::new(&root, &g.name)?;
    tracing::info!(job = %g.name, dir = %local.dir().display(), "checkpoints go to a local directory");
    Ok(Arc::new(local))
}

/// Where a job keeps its checkpoints when nothing else is configured: `./snapflow/<job>/`,
/// relative to the working directory.
pub const DEFAULT_CHECKPOINT_DIR: &str = "snapflow";

/// Sets the retention of the logs the job owns, and refuses actor operators without aligned
/// checkpoints (their commands could be applied twice).
fn check_owned(g: &GraphDef, config: &JobConfig, storage: &dyn CheckpointStorage) -> Result<()> {
    for (_, t) in &g.trimmers {
        t.set_keep(storage.retained());
    }
    for o in &g.owned {
        o.trimmer.set_keep(storage.retained());
        if o.replies.is_some() && config.mode != crate::checkpoint::CheckpointMode::ExactlyOnce {
            return Err(Error::Config(format!(
                "actor operator '{}' needs exactly-once checkpoints: without barrier alignment its commands could be applied twice",
                g.vertices[o.vertex].name
            )));
        }
    }
    Ok(())
}

fn add_vertex(
    graph: &Rc<RefCell<GraphDef>>,
    name: &str,
    role: Role,
    inputs: Vec<EdgeDef>,
    factory: LogicFactory,
    log: Option<Arc<dyn ReplayableLog>>,
) -> usize {
    let mut g = graph.borrow_mut();
    for e in &inputs {
        g.vertices[e.from].consumers += 1;
    }
    g.vertices.push(VertexDef {
        name: name.to_string(),
        uid: None,
        parallelism: None,
        role,
        inputs,
        consumers: 0,
        factory,
        log,
    });
    g.vertices.len() - 1
}

impl<T: Data> Stream<T> {
    fn derive<O>(
        &self,
        name: &str,
        role: Role,
        inputs: Vec<EdgeDef>,
        factory: LogicFactory,
    ) -> Stream<O> {
        let v = add_vertex(&self.graph, name, role, inputs, factory, None);
        Stream::from_vertex(&self.graph, v)
    }

    /// Sets the stable uid of the vertex that produces this stream (or the sink that ended
    /// it): what its state is stored under in checkpoints and savepoints, and what a restore
    /// matches. Defaults to the vertex's name; set it to keep a vertex's state when renaming
    /// the vertex in a new version of the job. Must be a safe file name
    /// ([`validate_name`](crate::validate_name)) and unique in the job.
    pub fn uid(self, uid: &str) -> Self {
        match self.vertex {
            Some(v) => self.graph.borrow_mut().vertices[v].uid = Some(uid.to_string()),
            None => self
                .graph
                .borrow_mut()
                .errors
                .push("uid() was called on a union; set it on each input instead".into()),
        }
        self
    }

    /// Sets the parallelism of the vertex that produces this stream.
    pub fn parallelism(self, parallelism: u32) -> Self {
        match self.vertex {
            Some(v) => self.graph.borrow_mut().vertices[v].parallelism = Some(parallelism),
            None => {
                self.graph.borrow_mut().errors.push(
                    "parallelism() was called on a union; set it on each input instead".into(),
                )
            }
        }
        self
    }

    fn ship(mut self, ship: Ship) -> Self {
        for e in &mut self.inputs {
            e.ship = ship;
        }
        self
    }

    /// The next operator receives this stream round robin, a batch at a time.
    pub fn rebalance(self) -> Self {
        self.ship(Ship::Rebalance)
    }

    /// The next operator receives every record on every task.
    pub fn broadcast(self) -> Self {
        self.ship(Ship::Broadcast)
    }

    /// The next operator's task i receives this stream's task i (needs equal parallelism).
    pub fn forward(self) -> Self {
        self.ship(Ship::Forward)
    }

    /// Merges two streams of the same type; the next operator reads both.
    pub fn union(mut self, other: Stream<T>) -> Stream<T> {
        self.inputs.extend(other.inputs);
        self.vertex = None;
        self
    }

    /// The next operator sends a record it fails on (an error or a panic) to `log`, as a
    /// [`DeadLetter`](super::DeadLetter) with the error, instead of failing its task (a
    /// poison pill would otherwise fail it on every replay).
    pub fn dead_letter(mut self, log: Arc<dyn ReplayableLog>) -> Self
    where
        T: serde::Serialize,
    {
        self.dead_letter = Some(DeadLetterSpec {
            log,
            encode: Arc::new(|r: &T| codec::encode(r, "dead letter record")),
        });
        self
    }

    /// Applies a user [`Operator`] (cloned for every task).
    pub fn process<O: Data, Op: Operator<T, O> + Clone>(self, name: &str, op: Op) -> Stream<O> {
        let op = Prototype::new(op);
        let dead = self.dead_letter.clone();
        let factory: LogicFactory = Arc::new(move |p| {
            let op = op.get("operator")?;
            Ok(
                Box::new(OperatorLogic::<T, O, Op>::new(op, dead.clone(), p)?)
                    as Box<dyn TaskLogic>,
            )
        });
        self.derive(name, Role::Operator, self.inputs.clone(), factory)
    }

    /// Calls `f` for every record without waiting for the call to resolve, and emits its
    /// outputs when it does (see [`crate::runtime::async_io`]): at most `options.capacity`
    /// calls in flight per task, results in order or as they resolve, the inputs of unfinished
    /// calls in each checkpoint and issued again after a restore.
    pub fn async_map<O: Data, F: AsyncFunction<T, O>>(
        self,
        name: &str,
        f: F,
        options: AsyncOptions,
    ) -> Stream<O>
    where
        T: StateValue,
    {
        if let Err(e) = options.validate() {
            self.graph
                .borrow_mut()
                .errors
                .push(format!("async_map '{name}': {e}"));
        }
        let f = Prototype::new(f);
        let factory: LogicFactory = Arc::new(move |p| {
            let f = f.get("async function")?;
            Ok(Box::new(AsyncLogic::<T, O, F>::new(f, options, p)?) as Box<dyn TaskLogic>)
        });
        self.derive(name, Role::Operator, self.inputs.clone(), factory)
    }

    /// One output per input.
    pub fn map<O: Data>(self, name: &str, f: impl Fn(T) -> O + Send + Sync + 'static) -> Stream<O> {
        self.flat_map(name, move |r, out| out.emit(f(r)))
    }

    /// Keeps the records `f` accepts.
    pub fn filter(self, name: &str, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        self.flat_map(name, move |r, out| {
            if f(&r) {
                out.emit(r);
            }
        })
    }

    /// Any number of outputs per input, emitted into the collector.
    pub fn flat_map<O: Data>(
        self,
        name: &str,
        f: impl Fn(T, &mut Collector<O>) + Send + Sync + 'static,
    ) -> Stream<O> {
        self.process(name, FlatMapOp(Arc::new(f)))
    }

    /// Partitions the stream by `key`.
    pub fn key_by<K: StateKey>(
        self,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            stream: self,
            key: Arc::new(key),
        }
    }

    /// Ends the stream in `sink` (cloned for every task).
    pub fn sink<S: TwoPhaseCommitSink<T> + Clone>(self, name: &str, sink: S) -> Stream<()> {
        let sink = Prototype::new(sink);
        let factory: LogicFactory = Arc::new(move |p| {
            let s = sink.get("sink")?;
            Ok(Box::new(SinkLogic::<T, S>::new(s, p)?) as Box<dyn TaskLogic>)
        });
        let v = add_vertex(
            &self.graph,
            name,
            Role::Sink,
            self.inputs.clone(),
            factory,
            None,
        );
        Stream {
            graph: Rc::clone(&self.graph),
            inputs: Vec::new(),
            vertex: Some(v),
            dead_letter: None,
            _t: PhantomData,
        }
    }
}

impl Stream<()> {
    /// Sets the parallelism of the sink that ended a stream.
    pub fn sink_parallelism(self, parallelism: u32) -> Self {
        if let Some(v) = self.vertex {
            self.graph.borrow_mut().vertices[v].parallelism = Some(parallelism);
        }
        self
    }
}

/// The declared command handlers, their names; declaration errors go to `build`.
fn declare<F>(
    graph: &Rc<RefCell<GraphDef>>,
    mut declared: Declared<F>,
) -> (Arc<HashMap<String, F>>, HashSet<String>) {
    graph.borrow_mut().errors.append(&mut declared.errors);
    let names = declared.handlers.keys().cloned().collect();
    (Arc::new(declared.handlers), names)
}

/// The command source of an actor operator vertex being added, and what the job keeps for it.
struct CommandSource {
    source: usize,
    replies: Arc<Replies>,
    trimmer: Arc<Trimmer>,
}

impl CommandSource {
    /// Adds the source `"{name}-commands"` reading `commands`; returns its stream.
    fn add<K: StateKey>(
        graph: &Rc<RefCell<GraphDef>>,
        name: &str,
        commands: &Arc<dyn ReplayableLog>,
    ) -> (Stream<CommandEnvelope<K>>, CommandSource) {
        let run = graph.borrow().run;
        let replies = Arc::new(Replies::new(run));
        let trimmer = Arc::new(Trimmer::new(Arc::clone(commands)));
        let (r2, t2) = (Arc::clone(&replies), Arc::clone(&trimmer));
        let mut source = LogSource::<CommandEnvelope<K>>::msgpack(Arc::clone(commands));
        // Commands carry no event time: their channels must not hold the operator's back.
        source.timeless = true;
        source.progress = Some(Arc::new(move |kind, offsets| {
            r2.durable_upto(offsets);
            t2.progress(kind, offsets);
        }));
        let builder = JobBuilder {
            graph: Rc::clone(graph),
        };
        let stream = builder.source(&format!("{name}-commands"), source);
        let source = graph.borrow().vertices.len() - 1;
        let added = CommandSource {
            source,
            replies,
            trimmer,
        };
        (stream, added)
    }

    /// Registers the actor vertex just added (running `Op`) as owning the command log.
    fn own<Op: 'static>(
        self,
        graph: &Rc<RefCell<GraphDef>>,
        log: Arc<dyn ReplayableLog>,
        declared: HashSet<String>,
        keyed: bool,
    ) {
        let vertex = graph.borrow().vertices.len() - 1;
        graph.borrow_mut().owned.push(OwnedLog {
            vertex,
            source: self.source,
            type_id: std::any::TypeId::of::<Op>(),
            type_name: std::any::type_name::<Op>(),
            log,
            trimmer: self.trimmer,
            replies: Some(self.replies),
            declared: Arc::new(declared),
            keyed,
        });
    }
}

impl<T: Data> Stream<T> {
    /// Applies an [`InstanceOperator`] (cloned for every task): a non-keyed operator that also
    /// takes the [`Query`](crate::runtime::Query) and [`Command`](crate::runtime::Command)
    /// types it handles, sent to one instance by index or to all of them through the vertex's
    /// [`InstanceRef`](crate::runtime::InstanceRef) once the job runs
    /// ([`JobHandle::instance_operator`]). `commands` is the vertex's command log, as for
    /// [`KeyedStream::actor`].
    pub fn actor<Op>(self, name: &str, op: Op, commands: Arc<dyn ReplayableLog>) -> Stream<Op::Out>
    where
        Op: InstanceOperator<In = T>,
    {
        let mut declared = InstanceCommands::<Op>::new();
        Op::commands(&mut declared);
        let (stream, actor) = CommandSource::add::<u32>(&self.graph, name, &commands);
        let mut inputs = self.inputs.clone();
        inputs.extend(stream.inputs.iter().map(|e| EdgeDef {
            from: e.from,
            ship: Ship::ByIndex,
            key_group: None,
        }));
        let (handlers, names) = declare(&self.graph, declared.0);
        let route = CommandRoute {
            vertex: name.to_string(),
            handlers,
            replies: Arc::clone(&actor.replies),
        };
        let op = Prototype::new(InstanceAdapter(op));
        let dead = self.dead_letter.clone();
        let factory: LogicFactory = Arc::new(move |p| {
            let op = op.get("operator")?;
            let logic = OperatorLogic::<T, Op::Out, InstanceAdapter<Op>>::new(op, dead.clone(), p)?;
            Ok(Box::new(InstanceLogic::new(logic, route.clone())) as Box<dyn TaskLogic>)
        });
        let out = self.derive(name, Role::Operator, inputs, factory);
        actor.own::<Op>(&self.graph, commands, names, false);
        out
    }
}

impl<K: StateKey, T: Data> KeyedStream<K, T> {
    /// Records an error to be reported by `build`.
    pub(crate) fn stream_errors(&self, message: String) {
        self.stream.graph.borrow_mut().errors.push(message);
    }

    fn hash_inputs(&self) -> Vec<EdgeDef> {
        let max_p = self.stream.graph.borrow().config.max_parallelism;
        let key = Arc::clone(&self.key);
        let kg: KeyGroupFn<T> = Arc::new(move |t: &T| key_group_for(&key(t), max_p));
        let any: Arc<dyn Any + Send + Sync> = Arc::new(kg);
        self.stream
            .inputs
            .iter()
            .map(|e| EdgeDef {
                from: e.from,
                ship: Ship::Hash,
                key_group: Some(Arc::clone(&any)),
            })
            .collect()
    }

    /// Applies a user [`KeyedOperator`] (cloned for every task).
    pub fn process<O: Data, Op: KeyedOperator<K, T, O> + Clone>(
        self,
        name: &str,
        op: Op,
    ) -> Stream<O> {
        let inputs = self.hash_inputs();
        let op = Prototype::new(op);
        let key = Arc::clone(&self.key);
        let dead = self.stream.dead_letter.clone();
        let factory: LogicFactory = Arc::new(move |p| {
            let op = op.get("operator")?;
            Ok(Box::new(KeyedLogic::<K, T, O, Op>::new(
                op,
                Arc::clone(&key),
                dead.clone(),
                p,
            )?) as Box<dyn TaskLogic>)
        });
        self.stream.derive(name, Role::Keyed, inputs, factory)
    }

    /// Applies an [`ActorOperator`] (cloned for every task): a keyed operator that also takes
    /// the [`Query`](crate::runtime::Query) and [`Command`](crate::runtime::Command) types it
    /// handles, sent through the vertex's [`OperatorRef`](crate::runtime::OperatorRef) once the
    /// job runs ([`JobHandle::operator`]).
    ///
    /// `commands` is the vertex's command log, owned by the job: a command is appended to it
    /// before it is applied, read back by a source vertex named `"{name}-commands"` and
    /// applied in order with the records; the job trims it once no retained checkpoint needs
    /// its records. Give a [`FileLog`](crate::FileLog) for commands that survive the process,
    /// a [`MemoryLog`](crate::MemoryLog) with a checkpoint storage in memory. The command
    /// source never ends: a job with an actor operator runs until it is stopped. The job
    /// trims the log, so a run that starts over (`StartFrom::Nothing`) finds only the
    /// records no retained checkpoint had covered.
    pub fn actor<Op>(self, name: &str, op: Op, commands: Arc<dyn ReplayableLog>) -> Stream<Op::Out>
    where
        Op: ActorOperator<Key = K, In = T>,
    {
        let mut declared = Commands::<Op>::new();
        Op::commands(&mut declared);
        let (stream, actor) = CommandSource::add::<K>(&self.stream.graph, name, &commands);
        let mut inputs = self.hash_inputs();
        inputs.extend(stream.key_by(|c| c.key.clone()).hash_inputs());
        let (handlers, names) = declare(&self.stream.graph, declared.0);
        let route = CommandRoute {
            vertex: name.to_string(),
            handlers,
            replies: Arc::clone(&actor.replies),
        };
        let op = Prototype::new(ActorAdapter(op));
        let key = Arc::clone(&self.key);
        let dead = self.stream.dead_letter.clone();
        let factory: LogicFactory = Arc::new(move |p| {
            let op = op.get("operator")?;
            let logic = KeyedLogic::<K, T, Op::Out, ActorAdapter<Op>>::new(
                op,
                Arc::clone(&key),
                dead.clone(),
                p,
            )?;
            Ok(Box::new(ActorLogic::new(logic, route.clone())) as Box<dyn TaskLogic>)
        });
        let out = self.stream.derive(name, Role::Keyed, inputs, factory);
        actor.own::<Op>(&self.stream.graph, commands, names, true);
        out
    }

    /// Folds each key's records with `f` in a value state named `name` and emits the new value
    /// after every record.
    pub fn reduce(self, name: &str, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> Stream<T>
    where
        T: StateValue,
    {
        let op = ReduceOp {
            f: Arc::new(f),
            state: None,
            _k: PhantomData,
        };
        self.process(name, op)
    }
}

/// A built job, ready to [`start`](Job::start).
pub struct Job {
    name: String,
    config: JobConfig,
    storage: Arc<dyn CheckpointStorage>,
    vertices: Vec<VertexDef>,
    /// Every log the job trims, by the source vertex that reads it.
    trimmers: Vec<(usize, Arc<Trimmer>)>,
    events: Option<Recipient<JobEvent>>,
    chaos: Option<ChaosMonkey>,
    owned: Vec<OwnedLog>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field(
                "vertices",
                &self
                    .vertices
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The key groups of a non-keyed actor operator's commands at parallelism `p`: the first key
/// group of the task whose index is the command's key (an index the address checked).
fn by_index(p: u32, max_p: u32) -> Arc<dyn Any + Send + Sync> {
    let kg: KeyGroupFn<CommandEnvelope<u32>> = Arc::new(move |c: &CommandEnvelope<u32>| {
        let index = c.key.min(p.saturating_sub(1));
        crate::state::KeyGroupRange::for_task(index, p, max_p)
            .map_or(crate::state::KeyGroup(0), |r| {
                crate::state::KeyGroup(r.start)
            })
    });
    Arc::new(kg)
}

/// The runtime's vertex specs: each edge's shipping resolved to an edge kind now that both
/// sides' parallelism is known.
fn vertex_specs(vertices: Vec<VertexDef>, par: &[u32], max_p: u32) -> Vec<VertexSpec> {
    vertices
        .into_iter()
        .enumerate()
        .map(|(v, def)| VertexSpec {
            inputs: def
                .inputs
                .iter()
                .map(|e| {
                    let kind = match e.ship {
                        Ship::Default if par[e.from] == par[v] => EdgeKind::Forward,
                        Ship::Default | Ship::Rebalance => EdgeKind::Rebalance,
                        Ship::Forward => EdgeKind::Forward,
                        Ship::Broadcast => EdgeKind::Broadcast,
                        Ship::Hash => EdgeKind::Hash,
                        Ship::ByIndex => {
                            return (e.from, EdgeKind::Hash, Some(by_index(par[v], max_p)));
                        }
                    };
                    (e.from, kind, e.key_group.clone())
                })
                .collect(),
            uid: def.uid.unwrap_or_else(|| def.name.clone()),
            name: def.name,
            role: def.role,
            factory: def.factory,
            log: def.log,
        })
        .collect()
}

/// What a job needs before its master starts: its topology, the checkpoint it restores (and
/// each task's state from it), and the id of its first checkpoint.
type Prepared = (
    Arc<Topology>,
    Option<CheckpointId>,
    HashMap<usize, RestoreState>,
    CheckpointId,
);

/// Reads the checkpoint the job starts from ([`JobConfig::start_from`]) and the largest id in
/// the storage, above which (and above the restored one) the run's checkpoint ids start.
async fn prepare(topo: Arc<Topology>, trimmers: Vec<(usize, Arc<Trimmer>)>) -> Result<Prepared> {
    if !trimmers.is_empty() {
        let storage = Arc::clone(&topo.storage);
        let by_uid: Vec<(String, Arc<Trimmer>)> = trimmers
            .into_iter()
            .map(|(v, t)| (topo.vertices[v].uid.clone(), t))
            .collect();
        let pin = move || pin_savepoints(storage.as_ref(), &by_uid);
        if topo.config.deterministic {
            pin()?;
        } else {
            tokio::task::spawn_blocking(pin)
                .await
                .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))??;
        }
    }
    let all: Vec<usize> = (0..topo.tasks.len()).collect();
    let (restored_from, restore) = topo.restore_plan(&all).await?;
    if let Some(id) = restored_from {
        if topo.restored_input_ended.load(Ordering::Relaxed) {
            tracing::warn!(job = %topo.name, checkpoint = %id,
                "the job already ran to the end of its input: it commits what that run left uncommitted, reads nothing, and ends (start with StartFrom::Nothing and a fresh output to run the input again)");
            topo.resumed_after_end.store(true, Ordering::Relaxed);
        }
    }
    let max_id = topo.max_checkpoint_id().await?;
    let first = CheckpointId(max_id.max(restored_from).map(|c| c.0 + 1).unwrap_or(1));
    Ok((topo, restored_from, restore, first))
}

/// Keeps in every trimmed log what the savepoints in `storage` need: the offsets their manifests
/// hold for the log's source (by uid). A savepoint whose manifest cannot be read pins nothing
/// (it cannot be restored either); it is logged.
fn pin_savepoints(
    storage: &dyn CheckpointStorage,
    trimmers: &[(String, Arc<Trimmer>)],
) -> Result<()> {
    for id in storage.completed_ids()? {
        let manifest = match storage.read_manifest(id) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(checkpoint = %id, error = %e, "could not read a checkpoint's manifest: the logs keep nothing for it");
                continue;
            }
        };
        if !manifest.is_savepoint() {
            continue;
        }
        for (uid, trimmer) in trimmers {
            let offsets: Vec<_> = manifest
                .sources
                .iter()
                .filter(|s| &s.task.vertex == uid)
                .map(|s| (s.partition, s.offset))
                .collect();
            trimmer.pin(&offsets);
        }
    }
    Ok(())
}

/// Starts one [`LogWriter`](crate::log::LogWriter) per log the job owns: on an arbiter of their
/// own (appends and syncs are blocking I/O) unless the job runs on the current thread.
fn start_writers(
    owned: &[OwnedLog],
    threads: Threads,
    arbiters: &mut Vec<Arbiter>,
) -> Vec<Recipient<crate::log::Append>> {
    use crate::log::LogWriter;
    if owned.is_empty() {
        return Vec::new();
    }
    let io = match threads {
        Threads::Current => None,
        Threads::Arbiters(_) => {
            let a = Arbiter::new();
            let h = a.handle();
            arbiters.push(a);
            Some(h)
        }
    };
    owned
        .iter()
        .map(|o| {
            let log = Arc::clone(&o.log);
            let addr = match &io {
                Some(h) => LogWriter::start_in_arbiter(h, move |_| LogWriter::new(log)),
                None => LogWriter::new(log).start(),
            };
            addr.recipient()
        })
        .collect()
}

/// What the job's handles reach its actor operators and ingresses through.
fn outside(
    topo: &Topology,
    owned: Vec<OwnedLog>,
    writers: Vec<Recipient<crate::log::Append>>,
    ended: tokio::sync::watch::Receiver<bool>,
) -> Arc<Outside> {
    let mut actors = HashMap::new();
    let mut ingresses = HashMap::new();
    for (o, writer) in owned.into_iter().zip(writers) {
        let name = topo.vertices[o.vertex].name.clone();
        let partitions = o.log.partitions().max(1);
        match o.replies {
            Some(replies) => {
                let entry = ActorEntry {
                    vertex: name.clone(),
                    type_id: o.type_id,
                    type_name: o.type_name,
                    first_task: topo.first_task(o.vertex),
                    parallelism: topo.parallelism[o.vertex],
                    max_parallelism: topo.config.max_parallelism,
                    replies,
                    partitions,
                    writer,
                    seq: Default::default(),
                    sources: source_tasks(topo, o.source),
                    declared: Arc::clone(&o.declared),
                    keyed: o.keyed,
                };
                actors.insert(name, Arc::new(entry));
            }
            None => {
                let entry = IngressEntry {
                    vertex: name.clone(),
                    type_id: o.type_id,
                    type_name: o.type_name,
                    partitions,
                    writer,
                    next: Default::default(),
                    sources: source_tasks(topo, o.source),
                };
                ingresses.insert(name, Arc::new(entry));
            }
        }
    }
    Arc::new(Outside {
        job: topo.name.clone(),
        vertices: topo.vertices.iter().map(|v| v.name.clone()).collect(),
        actors,
        ingresses,
        endpoints: Arc::clone(&topo.endpoints),
        ended,
        query_timeout: topo.config.query_timeout,
    })
}

/// The task numbers of vertex `v`.
fn source_tasks(topo: &Topology, v: usize) -> std::ops::Range<usize> {
    let first = topo.first_task(v);
    first..first + topo.parallelism[v] as usize
}

/// A flag that turns true once the job's result is published (or its root is gone).
fn ended_flag(
    result: &tokio::sync::watch::Receiver<Option<Result<super::handle::JobReport>>>,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut result = result.clone();
    actix::spawn(async move {
        let _ = result.wait_for(Option::is_some).await;
        let _ = tx.send(true);
    });
    rx
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the job inside the current actix System (the embedding application's) and
    /// returns its handle. Restores what [`JobConfig::start_from`] names first (the latest
    /// complete checkpoint by default).
    pub async fn start(self) -> Result<JobHandle> {
        let Job {
            name,
            config,
            storage,
            vertices,
            events,
            chaos,
            owned,
            trimmers,
        } = self;
        let par: Vec<u32> = vertices
            .iter()
            .map(|v| v.parallelism.unwrap_or(config.parallelism))
            .collect();
        let specs = vertex_specs(vertices, &par, config.max_parallelism);
        let mut arbiters = Vec::new();
        let handles: Vec<ArbiterHandle> = match config.threads {
            Threads::Current => vec![Arbiter::current()],
            Threads::Arbiters(n) => {
                for _ in 0..n {
                    arbiters.push(Arbiter::new());
                }
                arbiters.iter().map(|a| a.handle()).collect()
            }
        };
        let metrics = Arc::new(JobMetrics::new(&name, config.metrics_window));
        let topo = Topology::new(
            name.clone(),
            config.clone(),
            Arc::clone(&storage),
            specs,
            par,
            handles,
            Arc::clone(&metrics),
        );
        let prepared = match topo {
            Ok(topo) => prepare(Arc::new(topo), trimmers).await,
            Err(e) => Err(e),
        };
        let (topo, restored_from, restore, first) = match prepared {
            Ok(p) => p,
            Err(e) => {
                for a in arbiters {
                    a.stop();
                }
                return Err(e);
            }
        };
        if let Some(id) = restored_from {
            tracing::info!(job = %name, checkpoint = %id, "restoring from checkpoint");
        }
        let writers = start_writers(&owned, config.threads, &mut arbiters);
        let topo_for_outside = Arc::clone(&topo);
        let (root, result) = JobRoot::launch(
            topo,
            events,
            chaos,
            Arc::clone(&metrics),
            arbiters,
            restored_from,
            restore,
            first,
        );
        tracing::info!(job = %name, restored_from = ?restored_from, "job started");
        let ended = ended_flag(&result);
        let outside = outside(&topo_for_outside, owned, writers, ended);
        Ok(JobHandle {
            root,
            result,
            metrics,
            outside,
        })
    }

    /// Runs the job to its end in a new actix System on the calling thread (which must not
    /// already run one): the standalone way to run a bounded job.
    pub fn run(self) -> Result<super::handle::JobReport> {
        let system = actix::System::new();
        system.block_on(async move { self.start().await?.wait().await })
    }
}
