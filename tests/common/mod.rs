//! Helpers shared by the runtime tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, CompletedCheckpoint, Manifest, StateHandle, TaskId,
};
use snapflow::{Error, Result};

/// splitmix64.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Polls `f` every 5 ms until it is true or `timeout` passes; returns its last answer.
pub(crate) async fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
}

type Hook = Box<dyn Fn(CheckpointId) -> bool + Send + Sync>;

/// A storage that delegates to another and can delay state writes or fail manifest commits
/// of chosen checkpoints.
pub(crate) struct FaultyStorage {
    pub(crate) inner: Arc<dyn CheckpointStorage>,
    pub(crate) delay_write: Option<(Hook, Duration)>,
    pub(crate) fail_commit: Option<Hook>,
}

impl std::fmt::Debug for FaultyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStorage")
            .field("inner", &self.inner)
            .finish()
    }
}

impl FaultyStorage {
    pub(crate) fn new(inner: Arc<dyn CheckpointStorage>) -> Self {
        FaultyStorage {
            inner,
            delay_write: None,
            fail_commit: None,
        }
    }
}

impl CheckpointStorage for FaultyStorage {
    fn job(&self) -> &str {
        self.inner.job()
    }
    fn write_task_state(
        &self,
        id: CheckpointId,
        task: &TaskId,
        bytes: &[u8],
    ) -> Result<StateHandle> {
        if let Some((hook, delay)) = &self.delay_write {
            if hook(id) {
                std::thread::sleep(*delay);
            }
        }
        self.inner.write_task_state(id, task, bytes)
    }
    fn commit(&self, manifest: &Manifest) -> Result<()> {
        if let Some(hook) = &self.fail_commit {
            if hook(manifest.checkpoint) {
                return Err(Error::Config(format!(
                    "injected manifest failure for checkpoint {}",
                    manifest.checkpoint
                )));
            }
        }
        self.inner.commit(manifest)
    }
    fn abort(&self, id: CheckpointId) -> Result<()> {
        self.inner.abort(id)
    }
    fn completed_ids(&self) -> Result<Vec<CheckpointId>> {
        self.inner.completed_ids()
    }
    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        self.inner.verify(id)
    }
    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        self.inner.read_task_state(id, handle)
    }
}
