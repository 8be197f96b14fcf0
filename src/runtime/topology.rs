//! The wiring of a running job: which tasks exist, which channels join them, which failover
//! region each belongs to, and how to create (or re-create, for a restart) task actors with
//! fresh channels and restored state.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, watch};

use super::actor::wire::Endpoints;
use super::channel::{Gate, GatedInput, Receiver, Sender};
use super::config::{JobConfig, NoValidCheckpoint, StartFrom};
use super::logic::{EdgeKind, LogicParams, OutputSpec, RestoreState, TaskLogic};
use super::messages::TaskEvent;
use super::metrics::{
    EdgeInfo, InputProbe, JobGraph, JobMetrics, Partitioning, VertexInfo, VertexKind,
};
use super::operator::TaskInfo;
use super::task::{pace_stream, Completions, Pace, TaskActor, TaskSettings};
use crate::chaos::ChaosHooks;
use crate::checkpoint::fence::{WriteFence, WritePermit};
use crate::checkpoint::{
    Aligner, CheckpointId, CheckpointStorage, CompletedCheckpoint, Manifest, TaskId,
};
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId, ReplayableLog};
use crate::state::{KeyedSnapshot, OperatorSnapshot, TaskSnapshot};
use crate::supervision::failover_regions;

pub(crate) type LogicFactory = Arc<dyn Fn(LogicParams) -> Result<Box<dyn TaskLogic>> + Send + Sync>;

/// What a vertex is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Source { bounded: bool },
    Operator,
    Keyed,
    Sink,
}

/// An input edge as resolved at start: producer vertex, shipping kind, key group function.
pub(crate) type InputEdge = (
    usize,
    EdgeKind,
    Option<Arc<dyn std::any::Any + Send + Sync>>,
);

/// A vertex as the running job needs it.
pub(crate) struct VertexSpec {
    pub(crate) name: String,
    /// The vertex's stable uid (its name unless set): what its checkpoint files are named by
    /// and what a restore matches.
    pub(crate) uid: String,
    pub(crate) role: Role,
    pub(crate) factory: LogicFactory,
    pub(crate) log: Option<Arc<dyn ReplayableLog>>,
    /// (producer vertex, resolved kind, key group function) per input edge.
    pub(crate) inputs: Vec<InputEdge>,
}

/// One task of the running job.
#[derive(Debug, Clone)]
pub(crate) struct TaskSpec {
    pub(crate) id: TaskId,
    /// The task as checkpoints name it: its vertex's uid and its index.
    pub(crate) state_id: TaskId,
    pub(crate) vertex: usize,
    pub(crate) index: u32,
    pub(crate) is_source: bool,
    /// A keyed task: its restore is the expensive part of a recovery.
    pub(crate) is_keyed: bool,
    pub(crate) outputs: Vec<OutputSpec>,
    pub(crate) senders: usize,
    pub(crate) receivers: usize,
}

/// One channel: producer task's sender slot to consumer task's receiver slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelSpec {
    pub(crate) producer: usize,
    pub(crate) producer_slot: usize,
    pub(crate) consumer: usize,
    pub(crate) consumer_slot: usize,
}

/// A task actor just created: its address and its future's join handle.
pub(crate) type Spawned = (Addr<TaskActor>, tokio::task::JoinHandle<()>);

pub(crate) struct Topology {
    pub(crate) name: String,
    pub(crate) config: JobConfig,
    pub(crate) storage: Arc<dyn CheckpointStorage>,
    pub(crate) vertices: Vec<VertexSpec>,
    pub(crate) parallelism: Vec<u32>,
    pub(crate) tasks: Vec<TaskSpec>,
    pub(crate) channels: Vec<ChannelSpec>,
    pub(crate) regions: Vec<usize>,
    pub(crate) stops: Vec<Option<Arc<HashMap<PartitionId, LogOffset>>>>,
    pub(crate) arbiters: Vec<ArbiterHandle>,
    pub(crate) settings: TaskSettings,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) chaos: Arc<ChaosHooks>,
    /// Held while a manifest is written (with the retention that follows) and while a restore
    /// reads the latest checkpoint: a restore never decides on "the latest complete
    /// checkpoint" while one is being completed, nor reads files retention is deleting.
    pub(crate) manifest_gate: Arc<tokio::sync::Mutex<()>>,
    /// Every checkpoint-storage write and every task actor of this run holds a permit of it;
    /// see [`WriteFence`].
    pub(crate) fence: Arc<WriteFence>,
    /// Where each task takes queries now (actor operators).
    pub(crate) endpoints: Arc<Endpoints>,
    /// What a restore starts from: the configured starting point until the run completes a
    /// checkpoint, then the latest ([`Topology::start_point`]).
    pub(crate) start: std::sync::Mutex<StartFrom>,
    /// The job started from the final checkpoint of a run whose input ended.
    pub(crate) resumed_after_end: std::sync::atomic::AtomicBool,
    /// Whether the checkpoint the latest restore plan read was such a final checkpoint.
    pub(crate) restored_input_ended: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name)
            .field("tasks", &self.tasks.len())
            .field("channels", &self.channels.len())
            .finish()
    }
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// The tasks of `vertices` at `parallelism`, numbered vertex by vertex, and every channel
/// between them (a forward edge joins task `i` to task `i`, any other edge every pair).
fn lay_out(vertices: &[VertexSpec], parallelism: &[u32]) -> (Vec<TaskSpec>, Vec<ChannelSpec>) {
    let mut first = Vec::with_capacity(vertices.len());
    let mut tasks = Vec::new();
    for (v, p) in parallelism.iter().enumerate() {
        first.push(tasks.len());
        for index in 0..*p {
            tasks.push(TaskSpec {
                id: TaskId {
                    vertex: vertices[v].name.clone(),
                    index,
                },
                state_id: TaskId {
                    vertex: vertices[v].uid.clone(),
                    index,
                },
                vertex: v,
                index,
                is_source: matches!(vertices[v].role, Role::Source { .. }),
                is_keyed: vertices[v].role == Role::Keyed,
                outputs: Vec::new(),
                senders: 0,
                receivers: 0,
            });
        }
    }
    let mut channels = Vec::new();
    for (v, vertex) in vertices.iter().enumerate() {
        for (from, kind, key_group) in &vertex.inputs {
            let (pu, pv) = (parallelism[*from], parallelism[v]);
            for i in 0..pu {
                let targets: Vec<u32> = if *kind == EdgeKind::Forward {
                    vec![i]
                } else {
                    (0..pv).collect()
                };
                let producer = first[*from] + i as usize;
                let mut slots = Vec::with_capacity(targets.len());
                for j in targets {
                    let consumer = first[v] + j as usize;
                    let spec = ChannelSpec {
                        producer,
                        producer_slot: tasks[producer].senders,
                        consumer,
                        consumer_slot: tasks[consumer].receivers,
                    };
                    tasks[producer].senders += 1;
                    tasks[consumer].receivers += 1;
                    slots.push(spec.producer_slot);
                    channels.push(spec);
                }
                tasks[producer].outputs.push(OutputSpec {
                    kind: *kind,
                    channels: slots,
                    key_group: key_group.clone(),
                });
            }
        }
    }
    (tasks, channels)
}

/// For each vertex, the end offset of every partition of its log when it is a bounded source
/// (where its tasks stop), read once when the job starts.
#[allow(clippy::type_complexity)]
fn stop_offsets(
    vertices: &[VertexSpec],
) -> Result<Vec<Option<Arc<HashMap<PartitionId, LogOffset>>>>> {
    let mut stops = Vec::with_capacity(vertices.len());
    for v in vertices {
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
    Ok(stops)
}

/// Every task's channel ends with each slot filled: an empty slot is a wiring bug.
fn all_wired<T>(
    slots: HashMap<usize, Vec<Option<T>>>,
    what: &str,
) -> Result<HashMap<usize, Vec<T>>> {
    slots
        .into_iter()
        .map(|(t, ends)| {
            let ends = ends
                .into_iter()
                .map(|e| e.ok_or_else(|| Error::Internal(format!("a {what} slot was not wired"))));
            Ok((t, ends.collect::<Result<Vec<T>>>()?))
        })
        .collect()
}

/// How a restore chooses and checks its checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct RestorePlan {
    pub(crate) start: StartFrom,
    /// Storage reads on the calling thread (a deterministic job).
    pub(crate) inline: bool,
    pub(crate) when_none_verifies: NoValidCheckpoint,
    pub(crate) allow_unclaimed: bool,
    /// Told whether the checkpoint read ends its run's input.
    pub(crate) input_ended: Arc<std::sync::atomic::AtomicBool>,
}

/// The checkpoint `start` names, verified, and whether it was read by location (outside the
/// storage's own checkpoints); `None` to start empty.
fn read_start(
    storage: &dyn CheckpointStorage,
    start: &StartFrom,
) -> Result<Option<(CompletedCheckpoint, bool)>> {
    Ok(match start {
        StartFrom::Nothing => {
            // A restore reads the storage again, which ends a refusal of writes after a failed
            // one; what it finds is not used.
            if let Err(e) = storage.latest_complete() {
                tracing::debug!(error = %e, "no usable checkpoint in the storage (none is restored)");
            }
            None
        }
        StartFrom::Latest => storage.latest_complete()?.map(|c| (c, false)),
        StartFrom::Checkpoint(id) => Some((storage.verify(*id)?, false)),
        StartFrom::Savepoint(location) => Some((storage.verify_location(location)?, true)),
    })
}

/// Reads and decodes every task snapshot of vertex `uid` in `chosen` (by `location` when it
/// was read by location), in task order.
fn vertex_reader(
    storage: &Arc<dyn CheckpointStorage>,
    chosen: &CompletedCheckpoint,
    location: Option<String>,
    uid: &str,
) -> impl FnOnce() -> Result<Vec<TaskSnapshot>> + Send + 'static {
    let id = chosen.id();
    let mut entries: Vec<_> = chosen
        .manifest
        .tasks
        .iter()
        .filter(|t| t.task.vertex == uid)
        .cloned()
        .collect();
    entries.sort_by_key(|t| t.task.index);
    let s = Arc::clone(storage);
    move || {
        entries
            .iter()
            .map(|t| {
                let bytes = match &location {
                    Some(loc) => s.read_task_state_at(loc, &t.state)?,
                    None => s.read_task_state(id, &t.state)?,
                };
                TaskSnapshot::from_bytes(&bytes)
            })
            .collect()
    }
}

/// Checks that every vertex with state in `manifest` is one of `uids`: otherwise an
/// [`Error::UnclaimedState`] naming them, or (`allow`) a warning that their state is dropped.
fn claimed(manifest: &Manifest, uids: &[(String, u32)], allow: bool) -> Result<()> {
    let ours: HashSet<&str> = uids.iter().map(|(u, _)| u.as_str()).collect();
    let mut unclaimed: Vec<String> = manifest
        .tasks
        .iter()
        .map(|t| t.task.vertex.as_str())
        .chain(manifest.parallelism.keys().map(String::as_str))
        .filter(|v| !ours.contains(v))
        .map(str::to_string)
        .collect();
    unclaimed.sort();
    unclaimed.dedup();
    if unclaimed.is_empty() {
        return Ok(());
    }
    if allow {
        tracing::warn!(checkpoint = %manifest.checkpoint, vertices = ?unclaimed, "dropping the state of vertices the job does not have, as allowed");
        return Ok(());
    }
    Err(Error::UnclaimedState {
        checkpoint: manifest.checkpoint,
        vertices: unclaimed,
    })
}

impl Topology {
    /// Lays out tasks and channels for `vertices` at `parallelism`.
    pub(crate) fn new(
        name: String,
        config: JobConfig,
        storage: Arc<dyn CheckpointStorage>,
        vertices: Vec<VertexSpec>,
        parallelism: Vec<u32>,
        arbiters: Vec<ArbiterHandle>,
        metrics: Arc<JobMetrics>,
    ) -> Result<Topology> {
        let (tasks, channels) = lay_out(&vertices, &parallelism);
        let pairs: Vec<(usize, usize)> =
            channels.iter().map(|c| (c.producer, c.consumer)).collect();
        let regions = failover_regions(tasks.len(), &pairs);
        let stops = stop_offsets(&vertices)?;
        let settings = TaskSettings {
            batch_size: config.batch_size,
            linger: config.linger,
            idle_poll: config.source_idle_poll,
            mode: config.mode,
            deterministic: config.deterministic,
        };
        let endpoints = Arc::new(Endpoints::new(tasks.len()));
        let config_start = config.start_from.clone();
        metrics.set_graph(job_graph(&vertices, &parallelism));
        Ok(Topology {
            name,
            config,
            storage,
            vertices,
            parallelism,
            tasks,
            channels,
            regions,
            stops,
            arbiters,
            settings,
            metrics,
            chaos: Arc::new(ChaosHooks::default()),
            manifest_gate: Arc::new(tokio::sync::Mutex::new(())),
            fence: Arc::new(WriteFence::default()),
            endpoints,
            start: std::sync::Mutex::new(config_start),
            resumed_after_end: std::sync::atomic::AtomicBool::new(false),
            restored_input_ended: Arc::default(),
        })
    }

    /// The job's graph as manifests record it (without states: the tasks' acks add them).
    pub(crate) fn graph_records(&self) -> Vec<crate::checkpoint::VertexRecord> {
        self.vertices
            .iter()
            .zip(&self.parallelism)
            .map(|(v, p)| crate::checkpoint::VertexRecord {
                uid: v.uid.clone(),
                name: v.name.clone(),
                role: match v.role {
                    Role::Source { .. } => "source",
                    Role::Operator => "operator",
                    Role::Keyed => "keyed",
                    Role::Sink => "sink",
                }
                .to_string(),
                parallelism: *p,
                states: Vec::new(),
            })
            .collect()
    }

    /// The number of the first task of `vertex` (tasks are numbered vertex by vertex).
    pub(crate) fn first_task(&self, vertex: usize) -> usize {
        self.tasks
            .iter()
            .position(|t| t.vertex == vertex)
            .unwrap_or(self.tasks.len())
    }

    /// The tasks of the failover region of `task`, in task order.
    pub(crate) fn region_of(&self, task: usize) -> Vec<usize> {
        let r = self.regions[task];
        (0..self.tasks.len())
            .filter(|t| self.regions[*t] == r)
            .collect()
    }

    /// The largest checkpoint id the job's storage holds (complete or not), read on a
    /// blocking thread unless the job is deterministic. A new checkpoint coordinator numbers
    /// its checkpoints above it, so that no id is used twice.
    pub(crate) fn max_checkpoint_id(
        &self,
    ) -> impl std::future::Future<Output = Result<Option<CheckpointId>>> + 'static {
        let storage = Arc::clone(&self.storage);
        let inline = self.config.deterministic;
        async move {
            if inline {
                storage.max_id()
            } else {
                tokio::task::spawn_blocking(move || storage.max_id())
                    .await
                    .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
            }
        }
    }

    /// [`plan_restore`](Self::plan_restore) of `tasks` with this job's storage, gate,
    /// configuration and starting point.
    pub(crate) fn restore_plan(
        &self,
        tasks: &[usize],
    ) -> impl std::future::Future<
        Output = Result<(Option<CheckpointId>, HashMap<usize, RestoreState>)>,
    > + 'static {
        let uids = self
            .vertices
            .iter()
            .zip(&self.parallelism)
            .map(|(v, p)| (v.uid.clone(), *p))
            .collect();
        let triples = tasks
            .iter()
            .map(|t| (*t, self.tasks[*t].vertex, self.tasks[*t].index))
            .collect();
        let plan = RestorePlan {
            start: self.start_point(),
            inline: self.config.deterministic,
            when_none_verifies: self.config.when_no_checkpoint_verifies,
            allow_unclaimed: self.config.allow_unclaimed_state,
            input_ended: Arc::clone(&self.restored_input_ended),
        };
        Topology::plan_restore(
            Arc::clone(&self.storage),
            Arc::clone(&self.manifest_gate),
            uids,
            triples,
            plan,
        )
    }

    /// What a restore starts from now: the configured starting point until the run has
    /// completed a checkpoint of its own, then the latest.
    pub(crate) fn start_point(&self) -> StartFrom {
        self.start.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The run completed a checkpoint: from now on, restores read the latest one.
    pub(crate) fn checkpoint_completed(&self) {
        *self.start.lock().unwrap_or_else(|p| p.into_inner()) = StartFrom::Latest;
    }

    /// Reads the checkpoint `plan.start` names (for `Latest`: the newest complete one,
    /// falling back past corrupt ones) and prepares the restore state of `tasks`, matching
    /// vertices by uid (`uids`: every vertex's uid and parallelism). Vertices keep their
    /// parallelism within a run; a vertex whose parallelism differs from the checkpoint's (at
    /// job start) is redistributed. State of a uid no vertex has is an error unless allowed.
    pub(crate) async fn plan_restore(
        storage: Arc<dyn CheckpointStorage>,
        gate: Arc<tokio::sync::Mutex<()>>,
        uids: Vec<(String, u32)>,
        tasks: Vec<(usize, usize, u32)>,
        plan: RestorePlan,
    ) -> Result<(Option<CheckpointId>, HashMap<usize, RestoreState>)> {
        let _no_manifest_write = gate.lock_owned().await;
        let read = {
            let s = Arc::clone(&storage);
            let start = plan.start.clone();
            move || read_start(s.as_ref(), &start)
        };
        let chosen = if plan.inline {
            read()
        } else {
            blocking(read).await
        };
        let chosen = match chosen {
            Err(e @ Error::NoValidCheckpoint { .. })
                if plan.when_none_verifies == NoValidCheckpoint::StartOver =>
            {
                tracing::error!(error = %e, "starting over from the beginning of the log with empty state, as configured");
                None
            }
            other => other?,
        };
        let mut out = HashMap::new();
        let Some((chosen, external)) = chosen else {
            for (number, _, _) in tasks {
                out.insert(number, RestoreState::default());
            }
            return Ok((None, out));
        };
        claimed(&chosen.manifest, &uids, plan.allow_unclaimed)?;
        plan.input_ended.store(
            chosen.manifest.input_ended,
            std::sync::atomic::Ordering::Relaxed,
        );
        let id = chosen.id();
        let location = external.then(|| chosen.location.clone());
        let vertices: HashSet<usize> = tasks.iter().map(|(_, v, _)| *v).collect();
        let mut per_vertex: HashMap<usize, Vec<RestoreState>> = HashMap::new();
        for v in vertices {
            let (uid, p) = uids[v].clone();
            let read = vertex_reader(&storage, &chosen, location.clone(), &uid);
            let snapshots = if plan.inline {
                read()?
            } else {
                blocking(read).await?
            };
            let found = !snapshots.is_empty();
            if !found {
                tracing::warn!(vertex = %uid, checkpoint = %id, "vertex not in the checkpoint; it starts empty (a source at its log's start)");
            }
            let mut keyed: Vec<KeyedSnapshot> = Vec::new();
            let mut operator: Vec<OperatorSnapshot> = Vec::new();
            for s in snapshots {
                keyed.extend(s.keyed);
                operator.push(s.operator);
            }
            let mut states = RestoreState::for_vertex(keyed, &operator, p)?;
            states.iter_mut().for_each(|s| s.found = found);
            per_vertex.insert(v, states);
        }
        for (number, v, index) in tasks {
            let state = per_vertex
                .get_mut(&v)
                .and_then(|states| states.get_mut(index as usize))
                .map(std::mem::take)
                .unwrap_or_default();
            out.insert(number, state);
        }
        Ok((Some(id), out))
    }

    /// Fresh channels among `tasks` (every channel must have both ends in the set): each task's
    /// senders and receivers, in slot order.
    #[allow(clippy::type_complexity)]
    fn wire(
        &self,
        tasks: &[usize],
    ) -> Result<(HashMap<usize, Vec<Sender>>, HashMap<usize, Vec<Receiver>>)> {
        let set: HashSet<usize> = tasks.iter().copied().collect();
        let mut senders: HashMap<usize, Vec<Option<Sender>>> = HashMap::new();
        let mut receivers: HashMap<usize, Vec<Option<Receiver>>> = HashMap::new();
        for &t in tasks {
            senders.insert(t, (0..self.tasks[t].senders).map(|_| None).collect());
            receivers.insert(t, (0..self.tasks[t].receivers).map(|_| None).collect());
        }
        for c in &self.channels {
            let (p_in, c_in) = (set.contains(&c.producer), set.contains(&c.consumer));
            if p_in != c_in {
                return Err(Error::Internal(format!(
                    "channel {} -> {} leaves the set of tasks being started",
                    c.producer, c.consumer
                )));
            }
            if !p_in {
                continue;
            }
            let (tx, rx) = mpsc::channel(self.config.channel_capacity);
            let weak = tx.downgrade();
            let probe: InputProbe = Box::new(move || {
                weak.upgrade()
                    .map(|tx| (tx.max_capacity() - tx.capacity(), tx.max_capacity()))
            });
            self.metrics
                .task(&self.tasks[c.consumer].id)
                .set_input(c.consumer_slot, probe);
            if let Some(slot) = senders
                .get_mut(&c.producer)
                .and_then(|s| s.get_mut(c.producer_slot))
            {
                *slot = Some(tx);
            }
            if let Some(slot) = receivers
                .get_mut(&c.consumer)
                .and_then(|r| r.get_mut(c.consumer_slot))
            {
                *slot = Some(rx);
            }
        }
        Ok((
            all_wired(senders, "sender")?,
            all_wired(receivers, "receiver")?,
        ))
    }

    /// One permit of the job's fence per task to start.
    fn permits(&self, n: usize) -> Result<Vec<WritePermit>> {
        (0..n)
            .map(|_| {
                self.fence
                    .begin()
                    .ok_or_else(|| Error::Internal("the job is ending: no task may start".into()))
            })
            .collect()
    }

    /// Creates fresh channels among `tasks` (a union of failover regions: no channel leaves it)
    /// and starts their task actors with the given restore states. Returns, per task, a
    /// receiver of its address and join handle once its arbiter has created it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn(
        &self,
        tasks: &[usize],
        mut restore: HashMap<usize, RestoreState>,
        restored_from: Option<CheckpointId>,
        first_epoch: CheckpointId,
        incarnation: &HashMap<usize, u32>,
        master: &Recipient<TaskEvent>,
        cancel: &watch::Receiver<bool>,
    ) -> Result<Vec<(usize, oneshot::Receiver<Spawned>)>> {
        let (mut senders, mut receivers) = self.wire(tasks)?;
        // Every fallible step comes before the first task is handed to its arbiter, so that an
        // error never leaves a task running that its master does not know of. Each task holds a
        // permit of the job's fence for its whole life (see `WriteFence`).
        let alive = self.permits(tasks.len())?;
        let mut ready = Vec::with_capacity(tasks.len());
        for (&number, alive) in tasks.iter().zip(alive) {
            let spec = &self.tasks[number];
            let vertex = &self.vertices[spec.vertex];
            let attempt = incarnation.get(&number).copied().unwrap_or(0);
            let info = TaskInfo {
                task: spec.id.clone(),
                parallelism: self.parallelism[spec.vertex],
                max_parallelism: self.config.max_parallelism,
                restored_from,
                attempt,
            };
            let counters = self.metrics.task(&info.task);
            let logic = (vertex.factory)(LogicParams {
                counters: Arc::clone(&counters),
                watermark_interval: self.config.watermark_interval,
                idle_timeout: self.config.idle_timeout,
                info: info.clone(),
                outputs: spec.outputs.clone(),
                restore: restore.remove(&number).unwrap_or_default(),
                batch_size: self.config.batch_size,
                first_epoch,
                stop_offsets: self.stops[spec.vertex].clone(),
            })?;
            let task_senders = senders.remove(&number).unwrap_or_default();
            let task_receivers = receivers.remove(&number).unwrap_or_default();
            let spawn = SpawnTask {
                counters,
                info,
                state_id: spec.state_id.clone(),
                number,
                incarnation: attempt,
                logic,
                is_source: spec.is_source,
                is_sink: vertex.role == Role::Sink,
                senders: task_senders,
                receivers: task_receivers,
                master: master.clone(),
                storage: Arc::clone(&self.storage),
                metrics: Arc::clone(&self.metrics),
                cancel: cancel.clone(),
                settings: self.settings.clone(),
                chaos: Arc::clone(&self.chaos),
                fence: Arc::clone(&self.fence),
                endpoints: Arc::clone(&self.endpoints),
                alive,
            };
            ready.push((number, spawn));
        }
        let mut pending = Vec::with_capacity(ready.len());
        for (number, spawn) in ready {
            let (reply, rx) = oneshot::channel();
            // Round-robin over the job's tasks (not their index within a vertex, which would put
            // every task of a parallelism-1 pipeline on the first arbiter).
            self.arbiters[number % self.arbiters.len()].spawn_fn(move || {
                let _ = reply.send(spawn.spawn());
            });
            pending.push((number, rx));
        }
        Ok(pending)
    }
}

/// The job's graph as its metrics show it.
fn job_graph(vertices: &[VertexSpec], parallelism: &[u32]) -> JobGraph {
    let kind = |role: Role| match role {
        Role::Source { .. } => VertexKind::Source,
        Role::Operator => VertexKind::Operator,
        Role::Keyed => VertexKind::Keyed,
        Role::Sink => VertexKind::Sink,
    };
    let mut graph = JobGraph::default();
    for (v, p) in vertices.iter().zip(parallelism) {
        graph.vertices.push(VertexInfo {
            name: v.name.clone(),
            uid: v.uid.clone(),
            parallelism: *p,
            kind: kind(v.role),
        });
        for (producer, edge, _) in &v.inputs {
            graph.edges.push(EdgeInfo {
                from: vertices[*producer].name.clone(),
                to: v.name.clone(),
                partitioning: match edge {
                    EdgeKind::Forward => Partitioning::Forward,
                    EdgeKind::Rebalance => Partitioning::Rebalance,
                    EdgeKind::Broadcast => Partitioning::Broadcast,
                    EdgeKind::Hash => Partitioning::Hash,
                },
            });
        }
    }
    graph
}

/// Everything needed to create one task actor on its arbiter.
struct SpawnTask {
    info: TaskInfo,
    state_id: TaskId,
    number: usize,
    incarnation: u32,
    logic: Box<dyn TaskLogic>,
    is_source: bool,
    is_sink: bool,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    master: Recipient<TaskEvent>,
    storage: Arc<dyn CheckpointStorage>,
    metrics: Arc<JobMetrics>,
    counters: Arc<super::metrics::TaskCounters>,
    cancel: watch::Receiver<bool>,
    settings: TaskSettings,
    chaos: Arc<ChaosHooks>,
    fence: Arc<WriteFence>,
    endpoints: Arc<Endpoints>,
    /// Moves into the actor (dropped with it, or with this value if the arbiter never runs it).
    alive: WritePermit,
}

impl SpawnTask {
    /// Runs on the target arbiter: builds the actor's context with its input streams, spawns
    /// the actor's future, and returns its address and join handle.
    fn spawn(self) -> Spawned {
        let mut ctx: Context<TaskActor> = Context::new();
        let addr = ctx.address();
        let mut gates = Vec::with_capacity(self.receivers.len());
        let channels = self.receivers.len();
        for (i, rx) in self.receivers.into_iter().enumerate() {
            let gate = Rc::new(Gate::default());
            gates.push(Rc::clone(&gate));
            ctx.add_stream(GatedInput::new(i, rx, gate, Arc::clone(&self.metrics)));
        }
        let mut logic = self.logic;
        let completions = logic.take_completions();
        let is_async = completions.is_some();
        if let Some(rx) = completions {
            // Every call resolved by the time the task looks is handled in one go, with one
            // flush of the output, not one tiny batch per call.
            ctx.add_stream(futures::stream::unfold(rx, |mut rx| async move {
                let first = rx.recv().await?;
                let mut all = vec![first];
                while all.len() < 4096 {
                    match rx.try_recv() {
                        Ok(c) => all.push(c),
                        Err(_) => break,
                    }
                }
                Some((Completions(all), rx))
            }));
        }
        let pace = Rc::new(std::cell::Cell::new(Pace::Run));
        if self.is_source {
            ctx.add_stream(pace_stream(
                Rc::clone(&pace),
                self.settings.deterministic,
                self.endpoints.waker(self.number),
            ));
        }
        let span = TaskActor::life_span(&self.info);
        let actor = TaskActor {
            span,
            aligner: Aligner::new(channels, self.settings.mode),
            watermarks: crate::runtime::time::InputWatermarks::new(channels),
            info: self.info,
            state_id: self.state_id,
            number: self.number,
            incarnation: self.incarnation,
            logic,
            is_sink: self.is_sink,
            gates,
            ended: vec![false; channels],
            senders: self.senders,
            sends: Default::default(),
            master: self.master,
            storage: self.storage,
            snapshot_buf: Arc::new(std::sync::Mutex::new(Vec::new())),
            metrics: self.metrics,
            counters: self.counters,
            cancel: self.cancel,
            pace,
            settings: self.settings,
            chaos: self.chaos,
            fence: self.fence,
            _alive: self.alive,
            flush_scheduled: false,
            waiting: false,
            failed: false,
            end_sent: false,
            halted: false,
            at_end_reported: false,
            first_record_reported: false,
            is_async,
            end_deferred: false,
        };
        let join = actix::spawn(ctx.into_future(actor));
        self.endpoints
            .publish(self.number, addr.clone().recipient());
        (addr, join)
    }
}
