//! [`ObjectStoreCheckpointStorage`]: checkpoints in an object store (feature `object-store`;
//! S3 and S3-compatible stores with feature `s3`), on any backend of the `object_store`
//! crate. Its in-memory and local-file-system stores make fast tests.
//!
//! ```text
//! <prefix>/<job>/chk-00000000000000000042/
//!     task-<vertex>-<index>.<writer>.state   envelope("SNAPSTAT", task snapshot bytes)
//!     _manifest                              envelope("SNAPMANI", msgpack manifest), created last
//! ```
//! **Invariants:**
//! - An object appears whole or not at all: a state file is one PUT, or, from
//!   [`DEFAULT_MULTIPART_MIN_BYTES`] on, a multipart upload whose parts go up in parallel and
//!   which is completed only once every part is stored. A half-uploaded state file is never
//!   visible, and a failed upload is aborted.
//! - A checkpoint is complete exactly when its `_manifest` object exists. The manifest is
//!   created last, after every state object it names has been found at its size, with a
//!   conditional create: two writers can never both complete one checkpoint id (the second
//!   gets [`Error::CheckpointExists`]). Each storage writes its state objects under a writer
//!   token of its own, so the loser of such a race never overwrites the winner's files.
//! - A checkpoint is removed manifest first; what is left after that is an incomplete
//!   checkpoint, never restored, and removed by a later retention pass.
//! - Reads are bounded: an object larger than its handle (or the manifest limit) says is
//!   refused as corrupt before its body is read.
//!
//! Object PUTs are atomic, so unlike [`LocalCheckpointStorage`](super::LocalCheckpointStorage)
//! a failed write leaves nothing in doubt and refuses no later write. The methods of
//! [`CheckpointStorage`] block: the store's async calls run on a small runtime the storage owns
//! (2 worker threads), so a storage may be called from any thread that may block, inside or
//! outside a tokio runtime. Network failures reach the caller as [`Error::Remote`] of class
//! [`ErrorClass::Retryable`] after the retries (with exponential backoff) of the store's own
//! client, which its builder configures (`object_store::RetryConfig`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use super::{
    check_state, decode_any_manifest, decode_manifest, encode_manifest, CheckpointId,
    CheckpointKind, CheckpointStorage, CompletedCheckpoint, Manifest, StateHandle, TaskId,
    MAX_MANIFEST_BYTES, STATE_MAGIC,
};
use crate::error::{Error, ErrorClass, Result};
use crate::storage;

const MANIFEST_FILE: &str = "_manifest";
const DIR_PREFIX: &str = "chk-";

/// The default of [`ObjectStoreCheckpointStorage::with_multipart`]: state files from 8 MiB on
/// are uploaded in parts.
pub const DEFAULT_MULTIPART_MIN_BYTES: usize = 8 << 20;
/// The default part size of multipart uploads: 8 MiB (S3 needs at least 5 MiB).
pub const DEFAULT_PART_BYTES: usize = 8 << 20;
/// How many parts of one state file are uploaded at once.
const PART_CONCURRENCY: usize = 4;
/// How many objects one call reads, checks or removes at once.
const IO_CONCURRENCY: usize = 8;

/// Checkpoint storage in an object store. See the module documentation for the layout and the
/// guarantees.
#[derive(Debug)]
pub struct ObjectStoreCheckpointStorage {
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/<job>`: every object of the job's checkpoints is below it.
    root: ObjectPath,
    job: String,
    /// This storage's token in the names of the state objects it writes.
    writer: String,
    retain: usize,
    max_state_bytes: u64,
    multipart_min_bytes: usize,
    part_bytes: usize,
    io: IoRuntime,
    /// The kind of each complete checkpoint whose manifest was written or read (a manifest
    /// never changes): retention keeps savepoints.
    kinds: Mutex<HashMap<CheckpointId, CheckpointKind>>,
}

impl ObjectStoreCheckpointStorage {
    /// Storage for `job`'s checkpoints in `store` under `prefix/job` (an empty `prefix`: under
    /// `job`), keeping the newest 3 complete ones. The job name must be a safe file name
    /// ([`crate::validate_name`]); `prefix` a valid object path (segments separated by `/`).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        job: &str,
    ) -> Result<ObjectStoreCheckpointStorage> {
        storage::validate_name("job", job)?;
        let prefix = ObjectPath::parse(prefix)
            .map_err(|e| Error::Config(format!("invalid object store prefix {prefix:?}: {e}")))?;
        let root = prefix.join(job);
        ObjectStoreCheckpointStorage::unchecked(store, root, job)
    }

    /// A storage for reading checkpoints and savepoints of `store` by location only
    /// ([`CheckpointStorage::verify_location`], [`CheckpointStorage::read_task_state_at`]), for
    /// tools: it belongs to no job. Do not write through it.
    pub fn reader(store: Arc<dyn ObjectStore>) -> Result<ObjectStoreCheckpointStorage> {
        ObjectStoreCheckpointStorage::unchecked(store, ObjectPath::default(), "")
    }

    fn unchecked(
        store: Arc<dyn ObjectStore>,
        root: ObjectPath,
        job: &str,
    ) -> Result<ObjectStoreCheckpointStorage> {
        Ok(ObjectStoreCheckpointStorage {
            store,
            root,
            job: job.to_string(),
            writer: writer_token(),
            retain: 3,
            max_state_bytes: 16 << 30,
            multipart_min_bytes: DEFAULT_MULTIPART_MIN_BYTES,
            part_bytes: DEFAULT_PART_BYTES,
            io: IoRuntime::start()?,
            kinds: Mutex::new(HashMap::new()),
        })
    }

    /// Keeps the newest `k` complete checkpoints (at least 1). Savepoints are never removed.
    pub fn with_retain(mut self, k: usize) -> Self {
        self.retain = k.max(1);
        self
    }

    /// Refuses to read state files larger than `bytes` (default 16 GiB), treating them as
    /// corrupt rather than allocating for them.
    pub fn with_max_state_bytes(mut self, bytes: u64) -> Self {
        self.max_state_bytes = bytes;
        self
    }

    /// Uploads state files of at least `min_bytes` in parts of `part_bytes` (at least 5 MiB
    /// for S3, whose parts but the last may not be smaller), several at once. Defaults:
    /// [`DEFAULT_MULTIPART_MIN_BYTES`], [`DEFAULT_PART_BYTES`]. A `part_bytes` of 0 is refused.
    pub fn with_multipart(mut self, min_bytes: usize, part_bytes: usize) -> Result<Self> {
        if part_bytes == 0 {
            return Err(Error::Config(
                "the part size of multipart uploads must be above 0".into(),
            ));
        }
        self.multipart_min_bytes = min_bytes;
        self.part_bytes = part_bytes;
        Ok(self)
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `<prefix>/<job>`: the object path every checkpoint of the job is below.
    pub fn root(&self) -> &ObjectPath {
        &self.root
    }

    /// The object path of checkpoint `id`'s folder.
    pub fn checkpoint_path(&self, id: CheckpointId) -> ObjectPath {
        self.root.clone().join(format!("{DIR_PREFIX}{:020}", id.0))
    }

    fn corrupt(id: CheckpointId, path: &ObjectPath, reason: impl Into<String>) -> Error {
        Error::CheckpointCorrupt {
            checkpoint: id,
            path: PathBuf::from(path.as_ref()),
            reason: reason.into(),
        }
    }

    fn kinds(&self) -> std::sync::MutexGuard<'_, HashMap<CheckpointId, CheckpointKind>> {
        // A map of facts read from manifests: consistent whatever a panicking holder did.
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every checkpoint folder, complete or not, oldest first, with whether it has a manifest.
    fn all_ids(&self) -> Result<BTreeMap<CheckpointId, bool>> {
        let store = self.store.clone();
        let root = self.root.clone();
        let objects: Vec<ObjectPath> = self.io.run(async move {
            let listed = store.list(Some(&root)).map_ok(|m| m.location);
            match listed.try_collect().await {
                Ok(paths) => Ok(paths),
                Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(remote(&store, "LIST", &root, e)),
            }
        })?;
        let mut ids = BTreeMap::new();
        for path in objects {
            let Some(mut rest) = path.prefix_match(&self.root) else {
                continue;
            };
            let Some(id) = rest.next().and_then(|d| parse_dir(d.as_ref())) else {
                continue;
            };
            let manifest =
                rest.next().is_some_and(|f| f.as_ref() == MANIFEST_FILE) && rest.next().is_none();
            *ids.entry(id).or_insert(false) |= manifest;
        }
        Ok(ids)
    }

    /// Whether the object at `path` exists.
    fn exists(&self, path: &ObjectPath) -> Result<bool> {
        let store = self.store.clone();
        let path = path.clone();
        self.io.run(async move {
            match store.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(remote(&store, "HEAD", &path, e)),
            }
        })
    }
}

impl CheckpointStorage for ObjectStoreCheckpointStorage {
    fn job(&self) -> &str {
        &self.job
    }

    fn retained(&self) -> usize {
        self.retain
    }

    fn write_task_state(
        &self,
        id: CheckpointId,
        task: &TaskId,
        bytes: &[u8],
    ) -> Result<StateHandle> {
        self.write_task_state_parts(id, task, &[bytes])
    }

    fn write_task_state_parts(
        &self,
        id: CheckpointId,
        task: &TaskId,
        parts: &[&[u8]],
    ) -> Result<StateHandle> {
        storage::validate_name("vertex", &task.vertex)?;
        let dir = self.checkpoint_path(id);
        if self.exists(&dir.clone().join(MANIFEST_FILE))? {
            return Err(Error::Config(format!(
                "checkpoint {id} is already complete; its state cannot change"
            )));
        }
        let file = task.writer_state_file_name(&self.writer);
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let crc = parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p));
        // One copy, owned by the upload (which runs on the storage's runtime).
        let mut object = Vec::with_capacity(storage::ENVELOPE_HEADER + size);
        object.extend_from_slice(&storage::envelope_header(STATE_MAGIC, size, crc));
        for p in parts {
            object.extend_from_slice(p);
        }
        let (store, path) = (self.store.clone(), dir.clone().join(file.as_str()));
        let (min, part) = (self.multipart_min_bytes, self.part_bytes);
        self.io.run(upload(store, path, object, min, part))?;
        Ok(StateHandle {
            file,
            size: size as u64,
            crc32c: crc,
        })
    }

    fn commit(&self, manifest: &Manifest) -> Result<()> {
        let id = manifest.checkpoint;
        if manifest.job != self.job {
            return Err(Error::Config(format!(
                "manifest of job {:?} committed to the storage of job {:?}",
                manifest.job, self.job
            )));
        }
        let bytes = encode_manifest(manifest)?;
        let dir = self.checkpoint_path(id);
        let expected: Vec<(ObjectPath, u64)> = manifest
            .tasks
            .iter()
            .map(|t| {
                let len = storage::ENVELOPE_HEADER as u64 + t.state.size;
                (dir.clone().join(t.state.file.as_str()), len)
            })
            .collect();
        let store = self.store.clone();
        let job = self.job.clone();
        self.io.run(async move {
            check_sizes(&store, id, expected).await?;
            let path = dir.clone().join(MANIFEST_FILE);
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match store.put_opts(&path, PutPayload::from(bytes), create).await {
                Ok(_) => Ok(()),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Err(Error::CheckpointExists {
                    job,
                    checkpoint: id,
                }),
                Err(e) => Err(remote(&store, "PUT", &path, e)),
            }
        })?;
        self.kinds().insert(id, manifest.kind);
        tracing::info!(job = %self.job, checkpoint = %id, tasks = manifest.tasks.len(),
            bytes = manifest.state_bytes(), store = %self.store, "checkpoint complete");
        self.apply_retention(id)
    }

    fn abort(&self, id: CheckpointId) -> Result<()> {
        if self.exists(&self.checkpoint_path(id).clone().join(MANIFEST_FILE))? {
            return Err(Error::Config(format!(
                "checkpoint {id} is complete and cannot be aborted"
            )));
        }
        self.remove_checkpoint(id)?;
        tracing::info!(job = %self.job, checkpoint = %id, "checkpoint aborted; objects removed");
        Ok(())
    }

    fn completed_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self
            .all_ids()?
            .into_iter()
            .filter_map(|(id, complete)| complete.then_some(id))
            .collect())
    }

    fn max_id(&self) -> Result<Option<CheckpointId>> {
        Ok(self.all_ids()?.keys().next_back().copied())
    }

    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        let dir = self.checkpoint_path(id);
        let manifest = self.read_manifest_in(&dir, id, Some(id))?;
        self.read_states(&dir, &manifest)?;
        Ok(CompletedCheckpoint {
            location: self.location(id),
            manifest,
        })
    }

    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        self.read_state(&self.checkpoint_path(id), id, handle)
    }

    fn read_manifest(&self, id: CheckpointId) -> Result<Manifest> {
        self.read_manifest_in(&self.checkpoint_path(id), id, Some(id))
    }

    /// The object path of the checkpoint's folder inside this storage's store.
    fn location(&self, id: CheckpointId) -> String {
        self.checkpoint_path(id).to_string()
    }

    /// `location` is an object path in this storage's store (of any job: a savepoint copied
    /// to another prefix).
    fn verify_location(&self, location: &str) -> Result<CompletedCheckpoint> {
        let dir = parse_location(location)?;
        // Until the manifest is read, the folder's name is the best guess at the id.
        let guess = dir
            .filename()
            .and_then(parse_dir)
            .unwrap_or(CheckpointId(0));
        let manifest = self.read_manifest_in(&dir, guess, None)?;
        self.read_states(&dir, &manifest)?;
        Ok(CompletedCheckpoint {
            location: location.to_string(),
            manifest,
        })
    }

    fn read_task_state_at(&self, location: &str, handle: &StateHandle) -> Result<Vec<u8>> {
        self.read_state(&parse_location(location)?, CheckpointId(0), handle)
    }
}

impl ObjectStoreCheckpointStorage {
    /// Reads and checks the manifest in `dir`: of checkpoint `expect` of this job, or of any
    /// checkpoint of any job when `expect` is `None` (a savepoint read by location). `id`
    /// names the checkpoint in errors.
    fn read_manifest_in(
        &self,
        dir: &ObjectPath,
        id: CheckpointId,
        expect: Option<CheckpointId>,
    ) -> Result<Manifest> {
        let path = dir.clone().join(MANIFEST_FILE);
        let limit = MAX_MANIFEST_BYTES + storage::ENVELOPE_HEADER as u64;
        let store = self.store.clone();
        let at = path.clone();
        let read = self
            .io
            .run(async move { read_bounded(&store, &at, limit, id).await })?;
        let Some(bytes) = read else {
            return Err(match expect {
                Some(_) => Error::CheckpointNotFound {
                    job: self.job.clone(),
                    checkpoint: id,
                },
                None => Error::NothingAtLocation {
                    location: dir.to_string(),
                },
            });
        };
        let manifest = match expect {
            Some(id) => decode_manifest(&bytes, id, &self.job),
            None => decode_any_manifest(&bytes),
        }
        .map_err(|r| Self::corrupt(id, &path, r))?;
        if expect.is_some() {
            self.kinds().insert(manifest.checkpoint, manifest.kind);
        }
        Ok(manifest)
    }

    /// Reads and checks the state object of `handle` in the folder `dir` of checkpoint `id`.
    fn read_state(
        &self,
        dir: &ObjectPath,
        id: CheckpointId,
        handle: &StateHandle,
    ) -> Result<Vec<u8>> {
        let (store, dir, handle) = (self.store.clone(), dir.clone(), handle.clone());
        let max = self.max_state_bytes;
        self.io
            .run(async move { read_checked(&store, &dir, id, &handle, max).await })
    }

    /// Reads and checks every state object `manifest` names in `dir`, several at once.
    fn read_states(&self, dir: &ObjectPath, manifest: &Manifest) -> Result<()> {
        let (store, dir) = (self.store.clone(), dir.clone());
        let (id, max) = (manifest.checkpoint, self.max_state_bytes);
        let handles: Vec<StateHandle> = manifest.tasks.iter().map(|t| t.state.clone()).collect();
        self.io.run(async move {
            let reads = handles.into_iter().map(|h| {
                let (store, dir) = (store.clone(), dir.clone());
                // Checked, then dropped: only the verdict is kept.
                async move { read_checked(&store, &dir, id, &h, max).await.map(drop) }
            });
            futures::stream::iter(reads)
                .buffer_unordered(IO_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .map(drop)
        })
    }

    /// Removes every object of checkpoint `id`, its manifest first.
    fn remove_checkpoint(&self, id: CheckpointId) -> Result<()> {
        self.kinds().remove(&id);
        let dir = self.checkpoint_path(id);
        let store = self.store.clone();
        let job = self.job.clone();
        self.io.run(async move {
            let manifest = dir.clone().join(MANIFEST_FILE);
            match store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote(&store, "DELETE", &manifest, e)),
            }
            // Once the manifest is gone the checkpoint can never be restored: what is left is
            // removed by a later retention pass when this fails.
            let listed = store.list(Some(&dir)).map_ok(|m| m.location).boxed();
            let mut removed = store.delete_stream(listed);
            while let Some(r) = removed.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(job = %job, checkpoint = %id, error = %e,
                            "left objects of a removed checkpoint behind (it has no manifest: it will never be restored)");
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    /// The kind of complete checkpoint `id`, from its manifest (read once). An unreadable
    /// manifest counts as a checkpoint's: it can never be restored, so retention may remove it.
    fn kind_of(&self, id: CheckpointId) -> CheckpointKind {
        if let Some(k) = self.kinds().get(&id) {
            return *k;
        }
        match self.read_manifest(id) {
            Ok(m) => m.kind,
            Err(_) => CheckpointKind::Checkpoint,
        }
    }

    fn apply_retention(&self, committed: CheckpointId) -> Result<()> {
        let all = self.all_ids()?;
        // Savepoints are never removed, nor counted among the checkpoints kept.
        let complete: Vec<CheckpointId> = all
            .iter()
            .filter(|(_, complete)| **complete)
            .map(|(id, _)| *id)
            .filter(|id| self.kind_of(*id) == CheckpointKind::Checkpoint)
            .collect();
        let keep_from = complete.len().saturating_sub(self.retain);
        for &id in &complete[..keep_from] {
            self.remove_checkpoint(id)?;
            tracing::debug!(job = %self.job, checkpoint = %id, "retention removed checkpoint");
        }
        for (&id, &complete) in &all {
            if id < committed && !complete {
                self.remove_checkpoint(id)?;
                tracing::debug!(job = %self.job, checkpoint = %id, "removed stale incomplete checkpoint");
            }
        }
        Ok(())
    }
}

/// Uploads `object` to `path`: in one PUT below `multipart_min` bytes, else in parts of
/// `part` bytes, [`PART_CONCURRENCY`] at once (aborted on failure: no part is left behind).
async fn upload(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    object: Vec<u8>,
    multipart_min: usize,
    part: usize,
) -> Result<()> {
    if object.len() < multipart_min {
        return store
            .put(&path, PutPayload::from(object))
            .await
            .map(drop)
            .map_err(|e| remote(&store, "PUT", &path, e));
    }
    let started = store.put_multipart(&path).await;
    let mut writer = WriteMultipart::new_with_chunk_size(
        started.map_err(|e| remote(&store, "start multipart upload of", &path, e))?,
        part,
    );
    for chunk in object.chunks(part) {
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            // The first failure ends the upload; its own abort failing changes nothing.
            let _ = writer.abort().await;
            return Err(remote(&store, "upload a part of", &path, e));
        }
        writer.write(chunk);
    }
    writer
        .finish()
        .await
        .map(drop)
        .map_err(|e| remote(&store, "complete multipart upload of", &path, e))
}

/// Checks that every object of `expected` is there with its size (several at once).
async fn check_sizes(
    store: &Arc<dyn ObjectStore>,
    id: CheckpointId,
    expected: Vec<(ObjectPath, u64)>,
) -> Result<()> {
    let checks = expected.into_iter().map(|(path, len)| async move {
        match store.head(&path).await {
            Ok(meta) if meta.size == len => Ok(()),
            Ok(meta) => {
                let reason = format!("state file is {} bytes, expected {len}", meta.size);
                Err(ObjectStoreCheckpointStorage::corrupt(id, &path, reason))
            }
            Err(object_store::Error::NotFound { .. }) => Err(
                ObjectStoreCheckpointStorage::corrupt(id, &path, "state file is missing"),
            ),
            Err(e) => Err(remote(store, "HEAD", &path, e)),
        }
    });
    futures::stream::iter(checks)
        .buffer_unordered(IO_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// Reads the object at `path`, refusing it as corrupt (of checkpoint `id`) when it is larger
/// than `limit` bytes, before its body is read. `Ok(None)` when there is no such object.
async fn read_bounded(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
    limit: u64,
    id: CheckpointId,
) -> Result<Option<Vec<u8>>> {
    let got = match store.get(path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(remote(store, "GET", path, e)),
    };
    if got.meta.size > limit {
        let reason = format!("{} bytes, more than the {limit} expected", got.meta.size);
        return Err(ObjectStoreCheckpointStorage::corrupt(id, path, reason));
    }
    let bytes = got
        .bytes()
        .await
        .map_err(|e| remote(store, "GET", path, e))?;
    Ok(Some(bytes.to_vec()))
}

/// Reads the state object of `handle` in the folder `dir` of checkpoint `id` and checks it
/// against the handle (name, size at most `max`, envelope, checksum); returns its payload.
async fn read_checked(
    store: &Arc<dyn ObjectStore>,
    dir: &ObjectPath,
    id: CheckpointId,
    handle: &StateHandle,
    max: u64,
) -> Result<Vec<u8>> {
    let corrupt = ObjectStoreCheckpointStorage::corrupt;
    if storage::validate_name("state file", &handle.file).is_err() {
        let reason = format!("unsafe state file name {:?}", handle.file);
        return Err(corrupt(id, dir, reason));
    }
    let path = dir.clone().join(handle.file.as_str());
    if handle.size > max {
        let reason = format!("state of {} bytes exceeds the limit of {max}", handle.size);
        return Err(corrupt(id, &path, reason));
    }
    let limit = handle.size + storage::ENVELOPE_HEADER as u64;
    let bytes = read_bounded(store, &path, limit, id)
        .await?
        .ok_or_else(|| corrupt(id, &path, "state file is missing".into()))?;
    let payload = check_state(&bytes, handle).map_err(|r| corrupt(id, &path, r))?;
    Ok(payload.to_vec())
}

/// The checkpoint id a folder name `chk-<20 digits>` names.
fn parse_dir(name: &str) -> Option<CheckpointId> {
    let n = name.strip_prefix(DIR_PREFIX)?;
    (n.len() == 20).then_some(())?;
    n.parse().ok().map(CheckpointId)
}

fn parse_location(location: &str) -> Result<ObjectPath> {
    ObjectPath::parse(location).map_err(|e| Error::NothingAtLocation {
        location: format!("{location} (not an object path: {e})"),
    })
}

/// An [`Error::Remote`] for the failed call `op` on `path`: [`ErrorClass::Fatal`] when
/// retrying cannot help (refused credentials, an unsupported call, a bad path), else
/// [`ErrorClass::Retryable`].
fn remote(
    store: &Arc<dyn ObjectStore>,
    op: &str,
    path: &ObjectPath,
    e: object_store::Error,
) -> Error {
    use object_store::Error as E;
    let class = match &e {
        E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => ErrorClass::Fatal,
        _ => ErrorClass::Retryable,
    };
    Error::Remote {
        what: format!("{op} {path} in {store}"),
        reason: e.to_string(),
        class,
    }
}

/// 16 hex digits that tell this storage's state objects from those of any other writer: the
/// time, the process and a counter, mixed.
fn writer_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64's finalizer: nearby inputs give unrelated tokens.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:016x}", x ^ (x >> 31))
}

/// The runtime the store's calls run on: its own, so that the storage's blocking methods work
/// from any thread, and stopped without waiting when the storage is dropped (which may happen
/// inside an async context, where a runtime may not block).
#[derive(Debug)]
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn start() -> Result<IoRuntime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snapflow-object-io")
            .enable_all()
            .build()
            .map(|rt| IoRuntime(Some(rt)))
            .map_err(|e| Error::io("start the object store's runtime for", "checkpoints", e))
    }

    /// Runs `f` on the runtime and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let Some(rt) = &self.0 else {
            return Err(Error::Internal(
                "object store runtime already stopped".into(),
            ));
        };
        futures::executor::block_on(rt.spawn(f)).unwrap_or_else(|e| {
            Err(Error::Internal(format!(
                "an object store call did not finish: {e}"
            )))
        })
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
