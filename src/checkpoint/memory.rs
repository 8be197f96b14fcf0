//! [`MemoryCheckpointStorage`]: checkpoints in memory, for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{
    check_state, decode_manifest, encode_manifest, state_handle, CheckpointId, CheckpointKind,
    CheckpointStorage, CompletedCheckpoint, Manifest, StateHandle, TaskId, STATE_MAGIC,
};
use crate::error::{Error, Result};
use crate::storage;

#[derive(Debug, Default)]
struct Stored {
    files: HashMap<String, Vec<u8>>,
    manifest: Option<Vec<u8>>,
    kind: CheckpointKind,
}

/// Checkpoint storage held in memory, with the same envelopes, checks, retention and fallback
/// as [`LocalCheckpointStorage`](super::LocalCheckpointStorage). Nothing survives the process.
#[derive(Debug)]
pub struct MemoryCheckpointStorage {
    job: String,
    retain: usize,
    checkpoints: Mutex<BTreeMap<CheckpointId, Stored>>,
}

impl MemoryCheckpointStorage {
    /// Storage for `job`, keeping the newest 3 complete checkpoints.
    pub fn new(job: &str) -> Result<MemoryCheckpointStorage> {
        storage::validate_name("job", job)?;
        Ok(MemoryCheckpointStorage {
            job: job.to_string(),
            retain: 3,
            checkpoints: Mutex::new(BTreeMap::new()),
        })
    }

    /// Keeps the newest `k` complete checkpoints (at least 1).
    pub fn with_retain(mut self, k: usize) -> Self {
        self.retain = k.max(1);
        self
    }

    /// Changes the stored bytes of a file (`"_manifest"` or a state file name) with `f`, to
    /// test how readers handle corruption. Returns false when there is no such file.
    pub fn tamper(&self, id: CheckpointId, file: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut cps = self.lock();
        let Some(c) = cps.get_mut(&id) else {
            return false;
        };
        let target = if file == "_manifest" {
            c.manifest.as_mut()
        } else {
            c.files.get_mut(file)
        };
        match target {
            Some(bytes) => {
                f(bytes);
                true
            }
            None => false,
        }
    }

    /// The checkpoint of this storage that `location` names, if it names one.
    fn parse_location(&self, location: &str) -> Option<CheckpointId> {
        let rest = location.strip_prefix("memory:")?;
        let (job, id) = rest.rsplit_once('/')?;
        (job == self.job).then_some(())?;
        id.parse().ok().map(CheckpointId)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<CheckpointId, Stored>> {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn corrupt(id: CheckpointId, file: &str, reason: impl Into<String>) -> Error {
        Error::CheckpointCorrupt {
            checkpoint: id,
            path: format!("memory:{id}/{file}").into(),
            reason: reason.into(),
        }
    }
}

impl CheckpointStorage for MemoryCheckpointStorage {
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
        storage::validate_name("vertex", &task.vertex)?;
        let mut cps = self.lock();
        let c = cps.entry(id).or_default();
        if c.manifest.is_some() {
            return Err(Error::Config(format!(
                "checkpoint {id} is already complete; its state cannot change"
            )));
        }
        let handle = state_handle(task, bytes);
        c.files.insert(
            handle.file.clone(),
            storage::encode_envelope(STATE_MAGIC, bytes),
        );
        Ok(handle)
    }

    fn commit(&self, manifest: &Manifest) -> Result<()> {
        if manifest.job != self.job {
            return Err(Error::Config(format!(
                "manifest of job {:?} committed to the storage of job {:?}",
                manifest.job, self.job
            )));
        }
        let id = manifest.checkpoint;
        let bytes = encode_manifest(manifest)?;
        let mut cps = self.lock();
        let c = cps.entry(id).or_default();
        for t in &manifest.tasks {
            let ok = c
                .files
                .get(&t.state.file)
                .is_some_and(|f| f.len() as u64 == storage::ENVELOPE_HEADER as u64 + t.state.size);
            if !ok {
                return Err(Self::corrupt(
                    id,
                    &t.state.file,
                    "state file missing or of the wrong size",
                ));
            }
        }
        c.manifest = Some(bytes);
        c.kind = manifest.kind;
        // Savepoints are never removed, nor counted among the checkpoints kept.
        let complete: Vec<CheckpointId> = cps
            .iter()
            .filter(|(_, c)| c.manifest.is_some() && c.kind == CheckpointKind::Checkpoint)
            .map(|(id, _)| *id)
            .collect();
        let keep_from = complete.len().saturating_sub(self.retain);
        let keep_ids = &complete[keep_from..];
        cps.retain(|cid, c| {
            keep_ids.contains(cid)
                || (c.manifest.is_some() && c.kind == CheckpointKind::Savepoint)
                || (c.manifest.is_none() && *cid > id)
        });
        Ok(())
    }

    fn abort(&self, id: CheckpointId) -> Result<()> {
        let mut cps = self.lock();
        if cps.get(&id).is_some_and(|c| c.manifest.is_some()) {
            return Err(Error::Config(format!(
                "checkpoint {id} is complete and cannot be aborted"
            )));
        }
        cps.remove(&id);
        Ok(())
    }

    fn completed_ids(&self) -> Result<Vec<CheckpointId>> {
        Ok(self
            .lock()
            .iter()
            .filter(|(_, c)| c.manifest.is_some())
            .map(|(id, _)| *id)
            .collect())
    }

    fn max_id(&self) -> Result<Option<CheckpointId>> {
        Ok(self.lock().keys().next_back().copied())
    }

    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        let manifest_bytes = {
            let cps = self.lock();
            match cps.get(&id).and_then(|c| c.manifest.clone()) {
                Some(b) => b,
                None => {
                    return Err(Error::CheckpointNotFound {
                        job: self.job.clone(),
                        checkpoint: id,
                    })
                }
            }
        };
        let manifest = decode_manifest(&manifest_bytes, id, &self.job)
            .map_err(|r| Self::corrupt(id, "_manifest", r))?;
        for t in &manifest.tasks {
            self.read_task_state(id, &t.state)?;
        }
        Ok(CompletedCheckpoint {
            location: self.location(id),
            manifest,
        })
    }

    fn location(&self, id: CheckpointId) -> String {
        format!("memory:{}/{}", self.job, id.0)
    }

    fn verify_location(&self, location: &str) -> Result<CompletedCheckpoint> {
        match self.parse_location(location) {
            Some(id) => self.verify(id),
            None => Err(Error::NothingAtLocation {
                location: location.to_string(),
            }),
        }
    }

    fn read_task_state_at(&self, location: &str, handle: &StateHandle) -> Result<Vec<u8>> {
        match self.parse_location(location) {
            Some(id) => self.read_task_state(id, handle),
            None => Err(Error::NothingAtLocation {
                location: location.to_string(),
            }),
        }
    }

    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        let cps = self.lock();
        let bytes = cps
            .get(&id)
            .and_then(|c| c.files.get(&handle.file))
            .ok_or_else(|| Self::corrupt(id, &handle.file, "state file is missing"))?;
        check_state(bytes, handle)
            .map(|p| p.to_vec())
            .map_err(|r| Self::corrupt(id, &handle.file, r))
    }
}
