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
    fn max_id(&self) -> Result<Option<CheckpointId>> {
        self.inner.max_id()
    }
    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        self.inner.verify(id)
    }
    fn latest_complete(&self) -> Result<Option<CompletedCheckpoint>> {
        self.inner.latest_complete()
    }
    fn retained(&self) -> usize {
        self.inner.retained()
    }
    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        self.inner.read_task_state(id, handle)
    }
    fn location(&self, id: CheckpointId) -> String {
        self.inner.location(id)
    }
    fn read_manifest(&self, id: CheckpointId) -> Result<Manifest> {
        self.inner.read_manifest(id)
    }
    fn verify_location(&self, location: &str) -> Result<CompletedCheckpoint> {
        self.inner.verify_location(location)
    }
    fn read_task_state_at(&self, location: &str, handle: &StateHandle) -> Result<Vec<u8>> {
        self.inner.read_task_state_at(location, handle)
    }
}

use std::collections::BTreeMap;
use std::path::Path;

use snapflow::prelude::*;
use snapflow::state::OperatorListState;
use snapflow::FileSink;

/// A log of `n` records `(i % keys, 1)` over `partitions` partitions.
pub(crate) fn counting_log(n: u64, keys: u64, partitions: u32) -> Arc<dyn ReplayableLog> {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(partitions));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    let mut batch: Vec<Vec<(u64, u64)>> = vec![Vec::new(); partitions as usize];
    for i in 0..n {
        batch[(i % u64::from(partitions)) as usize].push((i % keys, 1));
    }
    for (p, b) in batch.iter().enumerate() {
        for chunk in b.chunks(1000) {
            typed
                .append_batch(PartitionId(p as u32), chunk)
                .expect("append");
        }
    }
    log
}

/// The middle stage: counts the records it saw in operator state (so a checkpoint holds the
/// count), optionally sleeping 1 ms every `sleep_every` records to give kills time to land.
#[derive(Clone)]
pub(crate) struct Stage {
    pub(crate) sleep_every: u64,
    pub(crate) seen: Option<OperatorListState<u64>>,
    pub(crate) opened: Option<Arc<std::sync::Mutex<Vec<u32>>>>,
}

impl Stage {
    pub(crate) fn new(sleep_every: u64) -> Stage {
        Stage {
            sleep_every,
            seen: None,
            opened: None,
        }
    }
}

impl Operator<(u64, u64), (u64, u64)> for Stage {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<()> {
        let seen = ctx
            .state()
            .list_state::<u64>("seen", snapflow::state::Redistribution::Split)?;
        if seen.get(ctx.state())?.is_empty() {
            seen.update(ctx.state(), vec![0])?;
        }
        self.seen = Some(seen);
        if let Some(o) = &self.opened {
            o.lock()
                .map_err(|_| Error::Internal("poisoned".into()))?
                .push(ctx.task().task.index);
        }
        Ok(())
    }

    fn process(
        &mut self,
        r: (u64, u64),
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if let Some(seen) = &self.seen {
            let n = seen.get(ctx.state())?.first().copied().unwrap_or(0) + 1;
            seen.update(ctx.state(), vec![n])?;
            if self.sleep_every > 0 && n % self.sleep_every == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        out.emit(r);
        Ok(())
    }
}

/// The standard 3-stage keyed job: source -> stage -> key_by -> reduce(count) -> file sink.
/// `stage` is usually a [`Stage`]; any pass-through operator fits (a [`PassThrough`]).
/// A sink writing `key count` lines, as [`check_updates`] reads them.
pub(crate) fn count_sink(out: &Path) -> FileSink<(u64, u64)> {
    FileSink::new(out, |(k, c): &(u64, u64), l: &mut String| {
        l.push_str(&format!("{k} {c}"))
    })
}

/// How many seeds a randomized test runs: `SNAPFLOW_ACTOR_SEEDS`, or `default`.
pub(crate) fn seeds(default: u64) -> u64 {
    std::env::var("SNAPFLOW_ACTOR_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn keyed_job(
    name: &str,
    config: JobConfig,
    storage: Arc<dyn CheckpointStorage>,
    log: Arc<dyn ReplayableLog>,
    out: &Path,
    stage: impl Operator<(u64, u64), (u64, u64)> + Clone,
) -> JobBuilder {
    let job = JobBuilder::with_config(name, config);
    job.checkpoint_storage(storage);
    job.source("source", LogSource::<(u64, u64)>::msgpack(log).bounded())
        .process("stage", stage)
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("sum", |a, b| (a.0, a.1 + b.1))
        .sink("sink", count_sink(out));
    job
}

/// Exactness of a keyed job's committed output: every key `k` must show the running counts
/// 1..=n_k exactly once each. Returns (records, lost, duplicated).
pub(crate) fn check_updates(out: &Path, n: u64, keys: u64) -> (u64, u64, u64) {
    let lines = FileSink::<(u64, u64)>::read_committed(out).expect("read committed output");
    let updates = lines.iter().map(|l| {
        let (k, c) = l.split_once(' ').expect("a `key count` line");
        (k.parse().expect("key"), c.parse().expect("count"))
    });
    exactness(updates, n, keys)
}

/// (records, lost, duplicated) of `(key, running count)` updates of `n` records over `keys`
/// keys: every key `k` must show the counts 1..=n_k exactly once.
pub(crate) fn exactness(
    updates: impl IntoIterator<Item = (u64, u64)>,
    n: u64,
    keys: u64,
) -> (u64, u64, u64) {
    let mut seen: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut records = 0;
    for u in updates {
        *seen.entry(u).or_insert(0) += 1;
        records += 1;
    }
    let mut lost = 0;
    let mut duplicated = 0;
    for k in 0..keys {
        let nk = n / keys + u64::from(k < n % keys);
        for c in 1..=nk {
            match seen.remove(&(k, c)).unwrap_or(0) {
                0 => lost += 1,
                m => duplicated += m - 1,
            }
        }
    }
    duplicated += seen.values().sum::<u64>();
    (records, lost, duplicated)
}

/// Runs `job` to its end under a chaos monkey of `seed` killing up to 3 times, every
/// `min_ms`..`max_ms`; a failed run panics naming the seed.
pub(crate) fn run_under_kills(
    job: JobBuilder,
    seed: u64,
    min_ms: u64,
    max_ms: u64,
) -> snapflow::JobReport {
    job.chaos(
        snapflow::chaos::ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(min_ms), Duration::from_millis(max_ms))
            .max_kills(3),
    );
    job.build()
        .expect("build")
        .run()
        .unwrap_or_else(|e| panic!("seed {seed} (SNAPFLOW_CHAOS_SEED={seed}): {e}"))
}

/// Settings for chaos runs: checkpoints every 10 ms, quick restarts.
pub(crate) fn chaos_config(threads: Threads) -> JobConfig {
    JobConfig {
        parallelism: 2,
        batch_size: 64,
        threads,
        checkpoints: snapflow::checkpoint::CheckpointTiming::every(Duration::from_millis(10))
            .with_timeout(Duration::from_secs(5)),
        restart: snapflow::RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: 1000,
        },
        coordinator_restart: snapflow::RestartStrategy::FixedDelay {
            delay: Duration::ZERO,
            max_attempts: 1000,
        },
        ..JobConfig::default()
    }
}

/// A job builder whose checkpoints stay in memory: tests never share `./snapflow/<job>`, the
/// durable default.
pub(crate) fn memory_job(name: &str, config: JobConfig) -> snapflow::JobBuilder {
    let job = snapflow::JobBuilder::with_config(name, config);
    job.checkpoint_in_memory();
    job
}

/// Builds, starts and waits for `job` inside the running actix System. A build or start
/// failure panics (the test is wrong); the run's own result is returned for the test to judge.
pub(crate) async fn run_to_end(job: snapflow::JobBuilder) -> Result<snapflow::JobReport> {
    job.build()
        .expect("build")
        .start()
        .await
        .expect("start")
        .wait()
        .await
}

/// What [`PassThrough`] does in `open`, given the task's index: fail, or take a while.
pub(crate) type OnOpen = Arc<dyn Fn(u32) -> Result<()> + Send + Sync>;

/// Passes records through; `on_open` runs in `open` (a slow start, a failing one).
#[derive(Clone)]
pub(crate) struct PassThrough {
    pub(crate) on_open: OnOpen,
}

impl snapflow::prelude::Operator<(u64, u64), (u64, u64)> for PassThrough {
    fn open(&mut self, ctx: &mut snapflow::prelude::OperatorContext<'_>) -> Result<()> {
        (self.on_open)(ctx.task().task.index)
    }

    fn process(
        &mut self,
        r: (u64, u64),
        _ctx: &mut snapflow::prelude::OperatorContext<'_>,
        out: &mut snapflow::prelude::Collector<(u64, u64)>,
    ) -> Result<()> {
        out.emit(r);
        Ok(())
    }
}

/// Which manifests a [`LatchedStorage`] holds.
type ManifestFilter = Box<dyn Fn(&Manifest) -> bool + Send + Sync>;

/// A storage that delegates to another, and can hold a manifest commit until the test
/// releases it, or fail every state write. The latch makes races reproducible without sleeps:
/// the test waits until the write has started ([`LatchedStorage::entered`]), does what it must
/// while the write is blocked, then releases it.
pub(crate) struct LatchedStorage {
    pub(crate) inner: Arc<dyn CheckpointStorage>,
    /// Hold the commit of the first manifest this accepts (`None`: hold none).
    hold: std::sync::Mutex<Option<ManifestFilter>>,
    released: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
    entered: tokio::sync::watch::Sender<u32>,
    /// Fail every state write with an I/O error.
    pub(crate) fail_state_writes: std::sync::atomic::AtomicBool,
    /// Every manifest commit takes this many milliseconds longer (slow storage).
    pub(crate) commit_delay_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LatchedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatchedStorage")
            .field("inner", &self.inner)
            .finish()
    }
}

impl LatchedStorage {
    pub(crate) fn new(inner: Arc<dyn CheckpointStorage>) -> Self {
        LatchedStorage {
            inner,
            hold: std::sync::Mutex::new(None),
            released: std::sync::Mutex::new(false),
            wake: std::sync::Condvar::new(),
            entered: tokio::sync::watch::channel(0).0,
            fail_state_writes: std::sync::atomic::AtomicBool::new(false),
            commit_delay_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Holds the commit of the first manifest `which` accepts until [`release`](Self::release).
    pub(crate) fn hold_commit(&self, which: impl Fn(&Manifest) -> bool + Send + Sync + 'static) {
        *self.hold.lock().expect("hold") = Some(Box::new(which));
    }

    /// Waits until the held commit has started (and is blocked).
    pub(crate) async fn entered(&self) {
        let mut rx = self.entered.subscribe();
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|n| *n > 0))
            .await
            .expect("the held manifest commit never started")
            .expect("entered");
    }

    /// Lets the held commit go on.
    pub(crate) fn release(&self) {
        *self.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Releases the held commit when dropped, also when the test panics first (a blocked
    /// storage thread would otherwise keep the runtime from shutting down).
    pub(crate) fn release_on_drop(self: &Arc<Self>) -> ReleaseOnDrop {
        ReleaseOnDrop(Arc::clone(self))
    }
}

/// See [`LatchedStorage::release_on_drop`].
pub(crate) struct ReleaseOnDrop(Arc<LatchedStorage>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl CheckpointStorage for LatchedStorage {
    fn job(&self) -> &str {
        self.inner.job()
    }
    fn write_task_state(
        &self,
        id: CheckpointId,
        task: &TaskId,
        bytes: &[u8],
    ) -> Result<StateHandle> {
        if self
            .fail_state_writes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Error::Io {
                op: "write state file",
                path: format!("checkpoint {id}").into(),
                source: Arc::new(std::io::Error::other("injected EIO: the disk is gone")),
            });
        }
        self.inner.write_task_state(id, task, bytes)
    }
    fn commit(&self, manifest: &Manifest) -> Result<()> {
        let held = {
            let mut hold = self.hold.lock().expect("hold");
            let matches = hold.as_ref().is_some_and(|f| f(manifest));
            if matches {
                *hold = None;
            }
            matches
        };
        if held {
            self.entered.send_modify(|n| *n += 1);
            let mut released = self.released.lock().expect("released");
            while !*released {
                released = self.wake.wait(released).expect("wait");
            }
        }
        let delay = self
            .commit_delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.inner.commit(manifest)
    }
    fn abort(&self, id: CheckpointId) -> Result<()> {
        self.inner.abort(id)
    }
    fn completed_ids(&self) -> Result<Vec<CheckpointId>> {
        self.inner.completed_ids()
    }
    fn max_id(&self) -> Result<Option<CheckpointId>> {
        self.inner.max_id()
    }
    fn verify(&self, id: CheckpointId) -> Result<CompletedCheckpoint> {
        self.inner.verify(id)
    }
    fn latest_complete(&self) -> Result<Option<CompletedCheckpoint>> {
        self.inner.latest_complete()
    }
    fn retained(&self) -> usize {
        self.inner.retained()
    }
    fn read_task_state(&self, id: CheckpointId, handle: &StateHandle) -> Result<Vec<u8>> {
        self.inner.read_task_state(id, handle)
    }
    fn location(&self, id: CheckpointId) -> String {
        self.inner.location(id)
    }
    fn read_manifest(&self, id: CheckpointId) -> Result<Manifest> {
        self.inner.read_manifest(id)
    }
    fn verify_location(&self, location: &str) -> Result<CompletedCheckpoint> {
        self.inner.verify_location(location)
    }
    fn read_task_state_at(&self, location: &str, handle: &StateHandle) -> Result<Vec<u8>> {
        self.inner.read_task_state_at(location, handle)
    }
}

/// Receives a job's lifecycle events ([`JobBuilder::events`]) for a test to wait on.
pub(crate) struct EventTap(tokio::sync::mpsc::UnboundedSender<JobEvent>);

impl actix::Actor for EventTap {
    type Context = actix::Context<Self>;
}

impl actix::Handler<JobEvent> for EventTap {
    type Result = ();
    fn handle(&mut self, e: JobEvent, _: &mut Self::Context) {
        let _ = self.0.send(e);
    }
}

/// The events of one job, in order.
pub(crate) struct Events(tokio::sync::mpsc::UnboundedReceiver<JobEvent>);

impl Events {
    /// A tap to give to [`JobBuilder::events`] and the events it receives.
    pub(crate) fn tap() -> (actix::Recipient<JobEvent>, Events) {
        use actix::Actor;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (EventTap(tx).start().recipient(), Events(rx))
    }

    /// Waits for the next event `pred` accepts (60 s at most: a hang fails the test).
    pub(crate) async fn until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&JobEvent) -> bool,
    ) -> JobEvent {
        let wait = async {
            while let Some(e) = self.0.recv().await {
                if pred(&e) {
                    return Some(e);
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the job's events ended before {what}"),
            Err(_) => panic!("no {what} within 60 s"),
        }
    }

    /// Every event from now to the job's end (its `JobFinished` or `JobFailed`, included).
    pub(crate) async fn until_the_end(&mut self) -> Vec<JobEvent> {
        let mut seen = Vec::new();
        self.until("the end of the job", |e| {
            seen.push(e.clone());
            matches!(e, JobEvent::JobFinished { .. } | JobEvent::JobFailed { .. })
        })
        .await;
        seen
    }
}
