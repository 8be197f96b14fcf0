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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use super::channel::{Collector, Gate, GatedInput, Receiver, Sender};
use super::config::{JobConfig, Threads};
use super::handle::JobHandle;
use super::logic::{
    Decoder, EdgeKind, KeyGroupFn, KeyedLogic, LogicParams, OperatorLogic, OutputSpec,
    RestoreState, SinkLogic, SourceLogic, TaskLogic,
};
use super::master::{JobMaster, Register, TaskSlot};
use super::metrics::JobMetrics;
use super::operator::{
    Data, FilterOp, FlatMapOp, KeyedOperator, MapOp, Operator, ReduceOp, TaskInfo,
};
use super::task::{pace_stream, Pace, TaskActor, TaskSettings};
use crate::checkpoint::{
    Aligner, CheckpointCoordinator, CheckpointId, CheckpointStorage, MemoryCheckpointStorage,
    TaskId,
};
use crate::error::{Error, Result};
use crate::log::{codec, LogOffset, PartitionId, ReplayableLog};
use crate::sink::TwoPhaseCommitSink;
use crate::state::{
    key_group_for, KeyedSnapshot, OperatorSnapshot, StateKey, StateValue, TaskSnapshot,
};
use crate::storage::validate_name;

pub(crate) type LogicFactory = Arc<dyn Fn(LogicParams) -> Result<Box<dyn TaskLogic>> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ship {
    /// Forward when both sides have the same parallelism, rebalance otherwise.
    Default,
    Forward,
    Rebalance,
    Broadcast,
    Hash,
}

#[derive(Clone)]
struct EdgeDef {
    from: usize,
    ship: Ship,
    key_group: Option<Arc<dyn Any + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Source { bounded: bool },
    Operator,
    Keyed,
    Sink,
}

struct VertexDef {
    name: String,
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
    vertices: Vec<VertexDef>,
    errors: Vec<String>,
}

/// A source reading a [`ReplayableLog`]: its partitions are spread over the source's tasks
/// (partition `j` to task `j % parallelism` on a fresh start; restored from the checkpoint's
/// offsets after a restart).
pub struct LogSource<T> {
    log: Arc<dyn ReplayableLog>,
    decode: Decoder<T>,
    bounded: bool,
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
        }
    }

    /// Makes the source bounded: it reads up to the end offsets the log has when the job
    /// starts, then the job takes a final checkpoint and ends.
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
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
    _t: PhantomData<fn() -> T>,
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
    /// default configuration.
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
                vertices: Vec::new(),
                errors: Vec::new(),
            })),
        }
    }

    /// Where checkpoints go (default: in memory, lost with the process).
    pub fn checkpoint_storage(&self, storage: Arc<dyn CheckpointStorage>) -> &Self {
        self.graph.borrow_mut().storage = Some(storage);
        self
    }

    /// Adds a source vertex reading `source`.
    pub fn source<T: Data>(&self, name: &str, source: LogSource<T>) -> Stream<T> {
        let LogSource {
            log,
            decode,
            bounded,
        } = source;
        let log2 = Arc::clone(&log);
        let factory: LogicFactory = Arc::new(move |p| {
            Ok(
                Box::new(SourceLogic::new(Arc::clone(&log2), Arc::clone(&decode), p)?)
                    as Box<dyn TaskLogic>,
            )
        });
        let v = add_vertex(
            &self.graph,
            name,
            Role::Source { bounded },
            Vec::new(),
            factory,
            Some(log),
        );
        Stream {
            graph: Rc::clone(&self.graph),
            inputs: vec![EdgeDef {
                from: v,
                ship: Ship::Default,
                key_group: None,
            }],
            vertex: Some(v),
            _t: PhantomData,
        }
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
        let mut names = HashSet::new();
        let max = config.max_parallelism;
        for v in &g.vertices {
            validate_name("vertex", &v.name)?;
            if !names.insert(v.name.clone()) {
                return Err(Error::InvalidGraph(format!(
                    "two vertices are named '{}'",
                    v.name
                )));
            }
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
            None => Arc::new(MemoryCheckpointStorage::new(&g.name)?),
        };
        if storage.job() != g.name {
            return Err(Error::Config(format!(
                "the checkpoint storage belongs to job '{}', not '{}'",
                storage.job(),
                g.name
            )));
        }
        Ok(Job {
            name: g.name.clone(),
            config,
            storage,
            vertices: std::mem::take(&mut g.vertices),
        })
    }
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
        Stream {
            graph: Rc::clone(&self.graph),
            inputs: vec![EdgeDef {
                from: v,
                ship: Ship::Default,
                key_group: None,
            }],
            vertex: Some(v),
            _t: PhantomData,
        }
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

    /// Applies a user [`Operator`] (cloned for every task).
    pub fn process<O: Data, Op: Operator<T, O> + Clone>(self, name: &str, op: Op) -> Stream<O> {
        let op = Mutex::new(op);
        let factory: LogicFactory = Arc::new(move |p| {
            let op = op
                .lock()
                .map_err(|_| Error::Internal("operator prototype poisoned".into()))?
                .clone();
            Ok(Box::new(OperatorLogic::<T, O, Op>::new(op, p)?) as Box<dyn TaskLogic>)
        });
        self.derive(name, Role::Operator, self.inputs.clone(), factory)
    }

    /// One output per input.
    pub fn map<O: Data>(self, name: &str, f: impl Fn(T) -> O + Send + Sync + 'static) -> Stream<O> {
        self.process(name, MapOp(Arc::new(f)))
    }

    /// Keeps the records `f` accepts.
    pub fn filter(self, name: &str, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        self.process(name, FilterOp(Arc::new(f)))
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
        let sink = Mutex::new(sink);
        let factory: LogicFactory = Arc::new(move |p| {
            let s = sink
                .lock()
                .map_err(|_| Error::Internal("sink prototype poisoned".into()))?
                .clone();
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

impl<K: StateKey, T: Data> KeyedStream<K, T> {
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
        let op = Mutex::new(op);
        let key = Arc::clone(&self.key);
        let factory: LogicFactory = Arc::new(move |p| {
            let op = op
                .lock()
                .map_err(|_| Error::Internal("operator prototype poisoned".into()))?
                .clone();
            Ok(
                Box::new(KeyedLogic::<K, T, O, Op>::new(op, Arc::clone(&key), p)?)
                    as Box<dyn TaskLogic>,
            )
        });
        self.stream.derive(name, Role::Keyed, inputs, factory)
    }

    /// Folds each key's records with `f` in a value state named `name` and emits the new value
    /// after every record.
    pub fn reduce(self, name: &str, f: impl Fn(T, T) -> T + Send + Sync + 'static) -> Stream<T>
    where
        T: StateValue,
    {
        let op = ReduceOp {
            name: name.to_string(),
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

struct TaskPlan {
    vertex: usize,
    index: u32,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    outputs: Vec<OutputSpec>,
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// Reads the state of every task of `checkpoint` and prepares each vertex's restore states.
async fn plan_restore(
    storage: &Arc<dyn CheckpointStorage>,
    vertices: &[VertexDef],
    parallelism: &[u32],
) -> Result<(Option<CheckpointId>, Vec<Vec<RestoreState>>)> {
    let fresh = || -> Result<Vec<Vec<RestoreState>>> {
        Ok(parallelism
            .iter()
            .map(|p| vec![RestoreState::default(); *p as usize])
            .collect())
    };
    let s = Arc::clone(storage);
    let Some(latest) = blocking(move || s.latest_complete()).await? else {
        return Ok((None, fresh()?));
    };
    let id = latest.id();
    let mut per_vertex = Vec::with_capacity(vertices.len());
    for (v, p) in vertices.iter().zip(parallelism) {
        let mut entries: Vec<_> = latest
            .manifest
            .tasks
            .iter()
            .filter(|t| t.task.vertex == v.name)
            .cloned()
            .collect();
        entries.sort_by_key(|t| t.task.index);
        let s = Arc::clone(storage);
        let snapshots = blocking(move || {
            entries
                .iter()
                .map(|t| TaskSnapshot::from_bytes(&s.read_task_state(id, &t.state)?))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        if snapshots.is_empty() {
            tracing::warn!(vertex = %v.name, checkpoint = %id, "vertex not in the checkpoint; it starts empty");
        }
        let mut keyed: Vec<KeyedSnapshot> = Vec::new();
        let mut operator: Vec<OperatorSnapshot> = Vec::new();
        for s in snapshots {
            keyed.extend(s.keyed);
            operator.push(s.operator);
        }
        per_vertex.push(RestoreState::for_vertex(keyed, &operator, *p)?);
    }
    Ok((Some(id), per_vertex))
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the job inside the current actix System (the embedding application's) and
    /// returns its handle. Restores the latest complete checkpoint first, unless
    /// [`JobConfig::restore_on_start`] is off.
    pub async fn start(self) -> Result<JobHandle> {
        let Job {
            name,
            config,
            storage,
            vertices,
        } = self;
        let par: Vec<u32> = vertices
            .iter()
            .map(|v| v.parallelism.unwrap_or(config.parallelism))
            .collect();
        let (restored_from, mut restores) = if config.restore_on_start {
            plan_restore(&storage, &vertices, &par).await?
        } else {
            (
                None,
                par.iter()
                    .map(|p| vec![RestoreState::default(); *p as usize])
                    .collect(),
            )
        };
        if let Some(id) = restored_from {
            tracing::info!(job = %name, checkpoint = %id, "restoring from checkpoint");
        }
        let first_epoch = CheckpointId(restored_from.map(|c| c.0 + 1).unwrap_or(1));

        // Stop offsets of bounded sources: the log's end when the job starts.
        let mut stops: Vec<Option<Arc<HashMap<PartitionId, LogOffset>>>> = Vec::new();
        for v in &vertices {
            match (&v.role, &v.log) {
                (Role::Source { bounded: true }, Some(log)) => {
                    let mut m = HashMap::new();
                    for p in 0..log.partitions() {
                        m.insert(PartitionId(p), log.end_offset(PartitionId(p))?);
                    }
                    stops.push(Some(Arc::new(m)));
                }
                _ => stops.push(None),
            }
        }

        // One plan per task, numbered in vertex order.
        let mut first_number = Vec::with_capacity(vertices.len());
        let mut plans: Vec<TaskPlan> = Vec::new();
        for (v, p) in par.iter().enumerate() {
            first_number.push(plans.len());
            for index in 0..*p {
                plans.push(TaskPlan {
                    vertex: v,
                    index,
                    senders: Vec::new(),
                    receivers: Vec::new(),
                    outputs: Vec::new(),
                });
            }
        }
        for (v, vertex) in vertices.iter().enumerate() {
            for e in &vertex.inputs {
                let (pu, pv) = (par[e.from], par[v]);
                let kind = match e.ship {
                    Ship::Default if pu == pv => EdgeKind::Forward,
                    Ship::Default | Ship::Rebalance => EdgeKind::Rebalance,
                    Ship::Forward => EdgeKind::Forward,
                    Ship::Broadcast => EdgeKind::Broadcast,
                    Ship::Hash => EdgeKind::Hash,
                };
                for i in 0..pu {
                    let targets: Vec<u32> = if kind == EdgeKind::Forward {
                        vec![i]
                    } else {
                        (0..pv).collect()
                    };
                    let mut channels = Vec::with_capacity(targets.len());
                    for j in targets {
                        let (tx, rx) = mpsc::channel(config.channel_capacity);
                        let producer = &mut plans[first_number[e.from] + i as usize];
                        producer.senders.push(tx);
                        channels.push(producer.senders.len() - 1);
                        plans[first_number[v] + j as usize].receivers.push(rx);
                    }
                    plans[first_number[e.from] + i as usize]
                        .outputs
                        .push(OutputSpec {
                            kind,
                            channels,
                            key_group: e.key_group.clone(),
                        });
                }
            }
        }

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

        let metrics = Arc::new(JobMetrics::default());
        let (done_tx, done_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let slots: Vec<TaskSlot> = plans
            .iter()
            .map(|p| TaskSlot {
                id: TaskId {
                    vertex: vertices[p.vertex].name.clone(),
                    index: p.index,
                },
                is_source: matches!(vertices[p.vertex].role, Role::Source { .. }),
                addr: None,
            })
            .collect();
        let task_count = slots.len();
        let tick = Duration::from_millis(5);
        let master = JobMaster {
            job: name.clone(),
            storage: Arc::clone(&storage),
            tasks: slots,
            parallelism: vertices
                .iter()
                .zip(&par)
                .map(|(v, p)| (v.name.clone(), *p))
                .collect(),
            max_parallelism: config.max_parallelism,
            coord: CheckpointCoordinator::new(config.checkpoints, task_count, first_epoch),
            registered: false,
            sources_at_end: HashSet::new(),
            metrics: Arc::clone(&metrics),
            done: Some(done_tx),
            arbiters,
            cancel: cancel_tx,
            started: std::time::Instant::now(),
            restored_from,
            completed: 0,
            last_completed: None,
            ending: false,
            tick,
        }
        .start();

        let settings = TaskSettings {
            batch_size: config.batch_size,
            linger: config.linger,
            idle_poll: config.source_idle_poll,
            mode: config.mode,
        };
        let mut pending = Vec::with_capacity(plans.len());
        for (number, plan) in plans.into_iter().enumerate() {
            let vertex = &vertices[plan.vertex];
            let info = TaskInfo {
                task: TaskId {
                    vertex: vertex.name.clone(),
                    index: plan.index,
                },
                parallelism: par[plan.vertex],
                max_parallelism: config.max_parallelism,
                restored_from,
            };
            let restore = std::mem::take(&mut restores[plan.vertex][plan.index as usize]);
            let logic = (vertex.factory)(LogicParams {
                info: info.clone(),
                outputs: plan.outputs,
                restore,
                batch_size: config.batch_size,
                first_epoch,
                stop_offsets: stops[plan.vertex].clone(),
            })?;
            let is_source = matches!(vertex.role, Role::Source { .. });
            let counters = metrics.task(&info.task);
            let (reply, rx) = oneshot::channel();
            let spawn = SpawnTask {
                info,
                number,
                logic,
                is_source,
                senders: plan.senders,
                receivers: plan.receivers,
                master: master.clone(),
                storage: Arc::clone(&storage),
                metrics: Arc::clone(&metrics),
                counters,
                cancel: cancel_rx.clone(),
                settings: settings.clone(),
            };
            handles[plan.index as usize % handles.len()].spawn_fn(move || {
                let _ = reply.send(spawn.spawn());
            });
            pending.push((number, rx));
        }
        let mut tasks = Vec::with_capacity(pending.len());
        for (number, rx) in pending {
            let (addr, join) = rx.await.map_err(|_| {
                Error::Internal("an arbiter dropped a task before starting it".into())
            })?;
            tasks.push((number, addr, join));
        }
        master.do_send(Register { tasks });
        tracing::info!(job = %name, tasks = task_count, restored_from = ?restored_from, "job started");
        Ok(JobHandle {
            master,
            result: done_rx,
            metrics,
        })
    }

    /// Runs the job to its end in a new actix System on the calling thread (which must not
    /// already run one): the standalone way to run a bounded job.
    pub fn run(self) -> Result<super::handle::JobReport> {
        let system = actix::System::new();
        system.block_on(async move { self.start().await?.wait().await })
    }
}

/// Everything needed to create one task actor on its arbiter.
struct SpawnTask {
    info: TaskInfo,
    number: usize,
    logic: Box<dyn TaskLogic>,
    is_source: bool,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    master: Addr<JobMaster>,
    storage: Arc<dyn CheckpointStorage>,
    metrics: Arc<JobMetrics>,
    counters: Arc<super::metrics::TaskCounters>,
    cancel: watch::Receiver<bool>,
    settings: TaskSettings,
}

impl SpawnTask {
    /// Runs on the target arbiter: builds the actor's context with its input streams, spawns
    /// the actor's future, and returns its address and join handle.
    fn spawn(self) -> (Addr<TaskActor>, tokio::task::JoinHandle<()>) {
        let mut ctx: Context<TaskActor> = Context::new();
        let addr = ctx.address();
        let mut gates = Vec::with_capacity(self.receivers.len());
        let channels = self.receivers.len();
        for (i, rx) in self.receivers.into_iter().enumerate() {
            let gate = Rc::new(Gate::default());
            gates.push(Rc::clone(&gate));
            ctx.add_stream(GatedInput::new(i, rx, gate, Arc::clone(&self.metrics)));
        }
        let pace = Rc::new(std::cell::Cell::new(Pace::Run));
        if self.is_source {
            ctx.add_stream(pace_stream(Rc::clone(&pace)));
        }
        let actor = TaskActor {
            aligner: Aligner::new(channels, self.settings.mode),
            info: self.info,
            number: self.number,
            logic: self.logic,
            gates,
            ended: vec![false; channels],
            senders: self.senders,
            sends: Default::default(),
            master: self.master,
            storage: self.storage,
            metrics: self.metrics,
            counters: self.counters,
            cancel: self.cancel,
            pace,
            settings: self.settings,
            flush_scheduled: false,
            waiting: false,
            failed: false,
            end_sent: false,
            at_end_reported: false,
        };
        let join = actix::spawn(ctx.into_future(actor));
        (addr, join)
    }
}
