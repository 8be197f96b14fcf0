//! Checkpoint storage: where task snapshots and checkpoint manifests are kept across crashes.
//!
//! A checkpoint `n` is written in two phases:
//! 1. every task writes its state with [`CheckpointStorage::write_task_state`], which returns a
//!    [`StateHandle`] (file name, size, CRC32C) once the bytes are durable;
//! 2. the coordinator, holding every handle, writes the [`Manifest`] with
//!    [`CheckpointStorage::commit`]. The manifest is written last and atomically; only then is
//!    `n` *complete*. Commit then applies retention (keep the newest `k` complete checkpoints,
//!    default 3) and removes older incomplete ones.
//!
//! **Invariant:** a checkpoint without a valid manifest does not exist. Readers
//! ([`CheckpointStorage::latest_complete`]) verify the manifest and every state file it names
//! (size and checksum) and fall back to the previous complete checkpoint, logging what failed,
//! when anything does not verify. Nothing corrupt is ever handed to a restore.
//!
//! Implementations: [`LocalCheckpointStorage`] (a directory; the default),
//! [`MemoryCheckpointStorage`] (for tests) and, with feature `object-store`,
//! `ObjectStoreCheckpointStorage` (S3 and the other stores of the `object_store` crate). All
//! keep the same file envelopes and checks.

mod barrier;
pub(crate) mod coordinator;
pub(crate) mod fence;
mod local;
mod memory;
#[cfg(feature = "object-store")]
mod object;
pub(crate) mod protocol;
mod rescale;
mod stats;

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId};
use crate::state::KeyGroupRange;
pub use crate::state::StateDescriptor;
use crate::storage;

pub use barrier::{Aligner, BarrierOutcome, CheckpointMode};
pub use coordinator::{AckOutcome, CheckpointCoordinator, CheckpointTiming, FailOutcome, Trigger};
pub use local::{LocalCheckpointStorage, DEFAULT_DIRECT_IO_MIN_BYTES};
pub use memory::MemoryCheckpointStorage;
#[cfg(feature = "object-store")]
pub use object::{ObjectStoreCheckpointStorage, DEFAULT_MULTIPART_MIN_BYTES, DEFAULT_PART_BYTES};
pub use rescale::rescale_savepoint;
pub use stats::CheckpointStats;

pub use crate::ids::{CheckpointId, TaskId};

impl TaskId {
    /// A task id, refusing vertex names that are unsafe as file names.
    pub fn new(vertex: impl Into<String>, index: u32) -> Result<TaskId> {
        let vertex = vertex.into();
        storage::validate_name("vertex", &vertex)?;
        Ok(TaskId { vertex, index })
    }

    /// The name of this task's state file in a checkpoint.
    pub(crate) fn state_file_name(&self) -> String {
        format!("task-{}-{}.state", self.vertex, self.index)
    }

    /// The name of this task's state file written by the writer `writer` (16 lowercase hex
    /// digits): storages that several processes may write at once keep each writer's files
    /// apart, so a writer that loses the race to complete a checkpoint never overwrites the
    /// files of the one that won.
    #[cfg_attr(not(feature = "object-store"), allow(dead_code))]
    pub(crate) fn writer_state_file_name(&self, writer: &str) -> String {
        format!("task-{}-{}.{writer}.state", self.vertex, self.index)
    }

    /// Whether `name` is a state file name of this task: [`state_file_name`](Self::state_file_name)
    /// or a [`writer_state_file_name`](Self::writer_state_file_name).
    pub(crate) fn is_state_file_name(&self, name: &str) -> bool {
        let Some(rest) = name
            .strip_prefix("task-")
            .and_then(|r| r.strip_prefix(self.vertex.as_str()))
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_prefix(self.index.to_string().as_str()))
            .and_then(|r| r.strip_suffix(".state"))
        else {
            return false;
        };
        rest.is_empty()
            || rest.strip_prefix('.').is_some_and(|w| {
                w.len() == 16
                    && w.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
    }
}

/// Where a task's state of one checkpoint is, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateHandle {
    /// The state file's name inside the checkpoint.
    pub file: String,
    /// The payload size in bytes.
    pub size: u64,
    /// CRC32C of the payload.
    pub crc32c: u32,
}

/// One task's entry in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStateEntry {
    /// The task.
    pub task: TaskId,
    /// Its state file.
    pub state: StateHandle,
    /// The key groups its keyed state covers, for a keyed task.
    pub key_groups: Option<KeyGroupRange>,
}

/// A source task's read position in one log partition: the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOffset {
    /// The source task.
    pub task: TaskId,
    /// The partition.
    pub partition: PartitionId,
    /// The offset to resume reading from.
    pub offset: LogOffset,
}

/// What a complete checkpoint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CheckpointKind {
    /// A periodic (or on-demand, or final) checkpoint: retention removes it once newer ones
    /// complete.
    #[default]
    Checkpoint,
    /// A savepoint ([`JobHandle::savepoint`](crate::JobHandle::savepoint)): always aligned,
    /// never removed by retention, self-contained (its directory can be copied elsewhere and
    /// restored from there with [`StartFrom::Savepoint`](crate::StartFrom::Savepoint)).
    Savepoint,
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointKind::Checkpoint => "checkpoint",
            CheckpointKind::Savepoint => "savepoint",
        })
    }
}

/// One vertex of the job that wrote a checkpoint, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexRecord {
    /// The vertex's stable uid: what a restore matches vertices by (its name unless set with
    /// [`Stream::uid`](crate::Stream::uid)). Its tasks' entries in the manifest are named by it.
    pub uid: String,
    /// The vertex's name in the job that wrote the checkpoint.
    pub name: String,
    /// What it is: `source`, `operator`, `keyed` or `sink`.
    pub role: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// The states its tasks registered (the union over its tasks).
    pub states: Vec<StateDescriptor>,
}

/// The description of a complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// The job's name.
    pub job: String,
    /// When the checkpoint was triggered, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The number of key groups of keyed vertices.
    pub max_parallelism: u32,
    /// The parallelism of every vertex.
    pub parallelism: BTreeMap<String, u32>,
    /// Every task's state.
    pub tasks: Vec<TaskStateEntry>,
    /// Every source task's log positions.
    pub sources: Vec<SourceOffset>,
    /// A checkpoint or a savepoint (manifests written before savepoints existed decode as
    /// checkpoints).
    #[serde(default)]
    pub kind: CheckpointKind,
    /// The job's graph when the checkpoint was taken: every vertex's uid, name, role,
    /// parallelism and states (empty in manifests written before it was recorded).
    #[serde(default)]
    pub vertices: Vec<VertexRecord>,
    /// True for the final checkpoint of a job whose input ended (a bounded job that ran to its
    /// end): a job that starts from it has nothing to read
    /// ([`JobReport::resumed_after_end`](crate::JobReport::resumed_after_end)).
    #[serde(default)]
    pub input_ended: bool,
}

impl Manifest {
    /// An empty manifest for checkpoint `checkpoint` of `job`, stamped with the current time.
    pub fn new(job: impl Into<String>, checkpoint: CheckpointId, max_parallelism: u32) -> Manifest {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Manifest {
            checkpoint,
            job: job.into(),
            created_unix_ms,
            max_parallelism,
            parallelism: BTreeMap::new(),
            tasks: Vec::new(),
            sources: Vec::new(),
            kind: CheckpointKind::Checkpoint,
            vertices: Vec::new(),
            input_ended: false,
        }
    }

    /// True for a savepoint.
    pub fn is_savepoint(&self) -> bool {
        self.kind == CheckpointKind::Savepoint
    }

    /// The state entry of `task`, if the manifest has one.
    pub fn task(&self, task: &TaskId) -> Option<&TaskStateEntry> {
        self.tasks.iter().find(|t| &t.task == task)
    }

    /// The sum of the state file sizes.
    pub fn state_bytes(&self) -> u64 {
        self.tasks.iter().map(|t| t.state.size).sum()
    }

    /// Checks the manifest's internal consistency:
    /// - the job, every vertex (in `parallelism`, in `tasks` and in `sources`) and so every
    ///   state file has a safe name;
    /// - every task has one entry, whose state file name matches the task;
    /// - every vertex in `parallelism` runs at least one task and has exactly the entries of
    ///   tasks `0..parallelism`, and every entry's vertex is in `parallelism` (sources' tasks
    ///   need not be: they may keep no state);
    /// - a keyed vertex (one with a key-group range on any entry) has a range on every entry,
    ///   and the ranges are disjoint and together cover `[0, max_parallelism)`.
    fn validate(&self) -> std::result::Result<(), String> {
        storage::validate_name("job", &self.job).map_err(|e| e.to_string())?;
        for (vertex, &p) in &self.parallelism {
            storage::validate_name("vertex", vertex).map_err(|e| e.to_string())?;
            if p == 0 {
                return Err(format!("vertex {vertex:?} has parallelism 0"));
            }
        }
        let mut seen = HashSet::new();
        let mut by_vertex: BTreeMap<&str, Vec<&TaskStateEntry>> = BTreeMap::new();
        for t in &self.tasks {
            storage::validate_name("vertex", &t.task.vertex).map_err(|e| e.to_string())?;
            if !seen.insert(&t.task) {
                return Err(format!("task {} appears twice", t.task));
            }
            if !t.task.is_state_file_name(&t.state.file) {
                return Err(format!(
                    "task {} names state file {:?}",
                    t.task, t.state.file
                ));
            }
            let Some(&p) = self.parallelism.get(&t.task.vertex) else {
                return Err(format!(
                    "task {} has state but its vertex has no parallelism in the manifest",
                    t.task
                ));
            };
            if t.task.index >= p {
                return Err(format!(
                    "task {} is beyond its vertex's parallelism {p}",
                    t.task
                ));
            }
            by_vertex.entry(t.task.vertex.as_str()).or_default().push(t);
        }
        for (vertex, &p) in &self.parallelism {
            let entries: &[&TaskStateEntry] = by_vertex
                .get(vertex.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            // No task appears twice and every index is below `p`, so `p` entries are exactly
            // the tasks 0..p.
            if entries.len() as u64 != u64::from(p) {
                let present: HashSet<u32> = entries.iter().map(|t| t.task.index).collect();
                return Err(match (0..p).find(|i| !present.contains(i)) {
                    Some(missing) => format!(
                        "vertex {vertex:?} has parallelism {p} but no state entry for task {missing}"
                    ),
                    None => format!(
                        "vertex {vertex:?} has parallelism {p} but {} state entries",
                        entries.len()
                    ),
                });
            }
            check_key_group_ranges(vertex, entries, self.max_parallelism)?;
        }
        for s in &self.sources {
            storage::validate_name("source vertex", &s.task.vertex).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Checks that the entries of one vertex either carry no key-group range at all, or each carry
/// one and the ranges are disjoint and together cover `[0, max_parallelism)`.
fn check_key_group_ranges(
    vertex: &str,
    entries: &[&TaskStateEntry],
    max_parallelism: u32,
) -> std::result::Result<(), String> {
    let keyed = entries.iter().filter(|t| t.key_groups.is_some()).count();
    if keyed == 0 {
        return Ok(());
    }
    if keyed != entries.len() {
        return Err(format!(
            "vertex {vertex:?} is keyed but only {keyed} of its {} tasks have a key-group range",
            entries.len()
        ));
    }
    let all = KeyGroupRange::all(max_parallelism)
        .map_err(|e| format!("vertex {vertex:?} is keyed but {e}"))?;
    let mut ranges: Vec<(KeyGroupRange, &TaskId)> = entries
        .iter()
        .filter_map(|t| t.key_groups.map(|r| (r, &t.task)))
        .collect();
    ranges.sort_by_key(|(r, _)| (r.start, r.end));
    // Sweep the ranges in order: each must start where the previous one ended.
    let mut next: u16 = 0;
    for (r, task) in &ranges {
        if r.start > r.end || r.end > all.end {
            return Err(format!(
                "task {task} has the key-group range {r}, which is not within {all}"
            ));
        }
        if r.start == r.end {
            // An empty range owns nothing: it can neither overlap nor leave a gap.
            continue;
        }
        if r.start < next {
            return Err(format!(
                "task {task}'s key groups {r} overlap another task's of vertex {vertex:?}"
            ));
        }
        if r.start > next {
            return Err(format!(
                "no task of vertex {vertex:?} owns the key groups [{next}, {})",
                r.start
            ));
        }
        next = r.end;
    }
    if next != all.end {
        return Err(format!(
            "no task of vertex {vertex:?} owns the key groups [{next}, {})",
            all.end
        ));
    }
    Ok(())
}

/// A checkpoint whose manifest and state files have been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedCheckpoint {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where it is ([`CheckpointStorage::location`]): a directory for a local storage.
    pub location: String,
}

impl CompletedCheckpoint {
    /// The checkpoint's id.
    pub fn id(&self) -> CheckpointId {
        self.manifest.checkpoint
    }
}

/// Durable storage for checkpoints. All methods block on I/O: call them from a background task
/// (`tokio::task::spawn_blocking`), never from an operator's actor.
pub trait CheckpointStorage: Send + Sync + fmt::Debug {
    /// The job whose checkpoints this stores.
    fn job(&self) -> &str;

    /// How many complete checkpoints retention keeps (the job keeps the records of the logs it
    /// owns that these need).
    fn retained(&self) -> usize {
        3
    }

    /// Stores one task's state for checkpoint `id`. When it returns, the bytes are durable;
    /// the file's directory entry may become durable only in `commit`, which must make every
    /// state file it names durable before the manifest (so a storage can share one directory
    /// sync among all the tasks of a checkpoint).
    fn write_task_state(
        &self,
        id: CheckpointId,
        task: &TaskId,
        bytes: &[u8],
    ) -> Result<StateHandle>;

    /// Stores one task's state given as parts whose concatenation is the state's bytes: the
    /// same as [`write_task_state`](Self::write_task_state) of the joined parts, which is what
    /// this default does. A storage that can write the parts without joining them first
    /// overrides it (checkpoints of keyed state hand over each key group's encoded bytes this
    /// way).
    fn write_task_state_parts(
        &self,
        id: CheckpointId,
        task: &TaskId,
        parts: &[&[u8]],
    ) -> Result<StateHandle> {
        self.write_task_state(id, task, &parts.concat())
    }

    /// Makes checkpoint `manifest.checkpoint` complete by writing its manifest atomically, after
    /// checking that the manifest is consistent (safe names; exactly the tasks `0..p` of every
    /// vertex in `parallelism` and no others; for a keyed vertex, key-group ranges on every task
    /// that are disjoint and cover `[0, max_parallelism)`: an [`Error::Config`] otherwise) and
    /// that every state file it names is there with the right size. Then applies retention.
    fn commit(&self, manifest: &Manifest) -> Result<()>;

    /// Removes every file of an incomplete checkpoint. Refuses to remove a complete one.
    fn abort(&self, id: CheckpointId) -> Result<()>;

    /// The ids of the checkpoints that have a manifest, oldest first (not verified).
    fn completed_ids(&self) -> Result<Vec<CheckpointId>>;

    /// The largest checkpoint id that has any files, complete or not. A job's next checkpoint
    /// must be above it, so ids (and the sink epochs named after them) are never reused.
    fn max_id(&self) -> Result<Option<CheckpointId>> {
        Ok(self.completed_ids()?.last().copied())
    }

    /// Reads and verifies the manifest of checkpoint `id` and every state file it names.
    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint>;

    /// Reads one task's state and checks it against its handle.
    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>>;

    /// Reads and checks the manifest of complete checkpoint `id`, without its state files
    /// (the default reads them too, through [`verify`](Self::verify)).
    fn read_manifest(&self, id: CheckpointId) -> Result<Manifest> {
        self.verify(id).map(|c| c.manifest)
    }

    /// Where checkpoint `id` is (or would be): a location that
    /// [`verify_location`](Self::verify_location) reads, a directory for a local storage. It
    /// is what [`JobHandle::savepoint`](crate::JobHandle::savepoint) reports.
    fn location(&self, id: CheckpointId) -> String;

    /// Reads and verifies the checkpoint or savepoint at `location`, which need not be inside
    /// this storage (a savepoint copied elsewhere): its manifest says its id, and it may come
    /// from a job of another name. [`Error::CheckpointNotFound`] when nothing is there,
    /// [`Error::CheckpointCorrupt`] when it does not verify. A storage that cannot read by
    /// location refuses with [`Error::Config`] (the default).
    fn verify_location(&self, location: &str) -> Result<CompletedCheckpoint> {
        Err(Error::Config(format!(
            "checkpoint storage of job {:?} cannot read a checkpoint by location ({location:?})",
            self.job()
        )))
    }

    /// Reads one task's state of the checkpoint at `location` (see
    /// [`verify_location`](Self::verify_location)) and checks it against its handle.
    fn read_task_state_at(&self, location: &str, handle: &StateHandle) -> Result<Vec<u8>> {
        let _ = handle;
        Err(Error::Config(format!(
            "checkpoint storage of job {:?} cannot read a checkpoint by location ({location:?})",
            self.job()
        )))
    }

    /// The newest checkpoint that verifies. A checkpoint that does not verify is skipped for
    /// the previous one, with an error logged naming what failed. `Ok(None)` when there is no
    /// complete checkpoint at all (start from the beginning of the log with empty state);
    /// [`Error::NoValidCheckpoint`], naming every checkpoint and why it was rejected, when
    /// there are complete checkpoints but none of them verifies: starting over then would
    /// repeat committed output, so it is never done silently.
    ///
    /// A restore calls this: a storage that refuses writes after a failed one (as
    /// [`LocalCheckpointStorage`] does) accepts them
    /// again from here on. A storage that wraps another must forward this method.
    fn latest_complete(&self) -> Result<Option<CompletedCheckpoint>> {
        latest_verified(self)
    }
}

/// The newest complete checkpoint of `storage` that verifies, falling back past those that do
/// not (the default [`CheckpointStorage::latest_complete`]).
pub(crate) fn latest_verified<S: CheckpointStorage + ?Sized>(
    storage: &S,
) -> Result<Option<CompletedCheckpoint>> {
    let mut rejected = Vec::new();
    for id in storage.completed_ids()?.into_iter().rev() {
        match storage.verify(id) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                tracing::error!(job = storage.job(), checkpoint = %id, error = %e,
                    "checkpoint does not verify; falling back to the previous one");
                rejected.push((id, e.to_string()));
            }
        }
    }
    if rejected.is_empty() {
        return Ok(None);
    }
    Err(Error::NoValidCheckpoint {
        job: storage.job().to_string(),
        rejected,
    })
}

pub(crate) const STATE_MAGIC: &[u8; 8] = b"SNAPSTAT";
pub(crate) const MANIFEST_MAGIC: &[u8; 8] = b"SNAPMANI";
/// Manifests larger than this are refused before they are read.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 64 << 20;

pub(crate) fn encode_manifest(manifest: &Manifest) -> Result<Vec<u8>> {
    manifest.validate().map_err(Error::Config)?;
    let payload = codec::encode_named(manifest, "checkpoint manifest")?;
    Ok(storage::encode_envelope(MANIFEST_MAGIC, &payload))
}

/// Decodes and checks a manifest's bytes, whatever checkpoint and job it names (a savepoint
/// read by location); `Err` holds the reason.
pub(crate) fn decode_any_manifest(bytes: &[u8]) -> std::result::Result<Manifest, String> {
    let payload = storage::decode_envelope(MANIFEST_MAGIC, bytes, MAX_MANIFEST_BYTES)?;
    let m: Manifest = codec::decode(payload, "checkpoint manifest").map_err(|e| e.to_string())?;
    m.validate()?;
    Ok(m)
}

/// Decodes and checks a manifest's bytes; `Err` holds the reason.
pub(crate) fn decode_manifest(
    bytes: &[u8],
    id: CheckpointId,
    job: &str,
) -> std::result::Result<Manifest, String> {
    let m = decode_any_manifest(bytes)?;
    if m.checkpoint != id {
        return Err(format!("manifest names checkpoint {}", m.checkpoint));
    }
    if m.job != job {
        return Err(format!("manifest names job {:?}", m.job));
    }
    Ok(m)
}

/// Checks a state file's bytes against its handle and returns the payload; `Err` holds the
/// reason.
pub(crate) fn check_state<'a>(
    bytes: &'a [u8],
    handle: &StateHandle,
) -> std::result::Result<&'a [u8], String> {
    let payload = storage::decode_envelope(STATE_MAGIC, bytes, handle.size)?;
    if payload.len() as u64 != handle.size {
        return Err(format!(
            "state is {} bytes, the manifest says {}",
            payload.len(),
            handle.size
        ));
    }
    let crc = crc32c::crc32c(payload);
    if crc != handle.crc32c {
        return Err(format!(
            "state checksum {crc:#010x} differs from the manifest's {:#010x}",
            handle.crc32c
        ));
    }
    Ok(payload)
}

pub(crate) fn state_handle(task: &TaskId, bytes: &[u8]) -> StateHandle {
    StateHandle {
        file: task.state_file_name(),
        size: bytes.len() as u64,
        crc32c: crc32c::crc32c(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_owns_its_plain_and_writer_state_file_names_and_no_other() {
        let t = TaskId::new("a", 1).expect("task");
        assert!(t.is_state_file_name(&t.state_file_name()));
        assert!(t.is_state_file_name(&t.writer_state_file_name("0123456789abcdef")));
        for other in [
            "task-a-1.0123456789ABCDEF.state", // upper case
            "task-a-1.0123456789abcde.state",  // 15 digits
            "task-a-1..state",
            "task-a-10.state",
            "task-a-1-0.state",
            "task-a-1.state.tmp",
        ] {
            assert!(!t.is_state_file_name(other), "{other}");
        }
        // Vertex names with dashes stay apart: task 0 of `a-1` is not task 1 of `a`.
        let dashed = TaskId::new("a-1", 0).expect("task");
        assert!(!t.is_state_file_name(&dashed.state_file_name()));
        assert!(dashed.is_state_file_name(&dashed.state_file_name()));
    }
}
