//! The foundation end to end, without the dataflow runtime: write events to a `FileLog`, fold
//! them into keyed state on two "tasks", checkpoint that state and the read offsets, crash,
//! restore the last checkpoint at another parallelism, replay the log from the checkpointed
//! offsets, and check the result against a direct computation.
//!
//! Run: `cargo run --release --example log_state_checkpoint`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use snapflow::checkpoint::{
    CheckpointId, CheckpointStorage, LocalCheckpointStorage, Manifest, SourceOffset, TaskId,
    TaskStateEntry,
};
use snapflow::state::{
    key_group_for, task_for_key_group, KeyGroupRange, KeyedStateBackend, ReducingState,
    TaskSnapshot, ValueState, DEFAULT_MAX_PARALLELISM,
};
use snapflow::{
    FileLog, FileLogOptions, LogOffset, PartitionId, ReplayableLog, Result, SyncPolicy, TypedLog,
};

const G: u32 = DEFAULT_MAX_PARALLELISM;
const PARTITIONS: u32 = 2;
const EVENTS: u64 = 200_000;
const USERS: u64 = 5_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Purchase {
    user: u64,
    cents: u64,
}

/// One keyed task: a total per user and a purchase count per user.
struct Task {
    state: KeyedStateBackend<u64>,
    total: ReducingState<u64>,
    count: ValueState<u64>,
}

impl Task {
    fn new(index: u32, parallelism: u32) -> Result<Task> {
        let range = KeyGroupRange::for_task(index, parallelism, G)?;
        let mut state = KeyedStateBackend::new(range, G)?;
        let total = state.reducing_state("total", |acc: &mut u64, x| *acc += x)?;
        let count = state.value_state("count")?;
        Ok(Task {
            state,
            total,
            count,
        })
    }

    fn process(&mut self, p: &Purchase) -> Result<()> {
        self.state.set_current_key(p.user)?;
        self.total.add(&mut self.state, p.cents)?;
        *self.count.get_or_insert_with(&mut self.state, || 0)? += 1;
        Ok(())
    }
}

/// Reads every partition from `offsets` to the end (or `limit` records each) and routes each
/// purchase to the task owning its key group, as a `key_by` would. Returns the new offsets.
fn run(
    log: &TypedLog<Purchase>,
    tasks: &mut [Task],
    offsets: &mut [LogOffset],
    limit: u64,
) -> Result<u64> {
    let p = tasks.len() as u32;
    let mut processed = 0;
    for (part, offset) in offsets.iter_mut().enumerate() {
        let stop = offset.0.saturating_add(limit);
        while offset.0 < stop {
            let want = (stop - offset.0).min(1024) as usize;
            let batch = log.read(PartitionId(part as u32), *offset, want)?;
            if batch.is_empty() {
                break;
            }
            for (o, purchase) in &batch {
                let kg = key_group_for(&purchase.user, G);
                tasks[task_for_key_group(kg, p, G) as usize].process(purchase)?;
                *offset = o.next();
                processed += 1;
            }
        }
    }
    Ok(processed)
}

/// Captures every task's state on this thread, encodes and writes it on a background thread,
/// then commits the manifest.
fn checkpoint(
    storage: &Arc<LocalCheckpointStorage>,
    id: CheckpointId,
    tasks: &mut [Task],
    offsets: &[LogOffset],
) -> Result<Manifest> {
    let started = Instant::now();
    let captures: Vec<_> = tasks.iter_mut().map(|t| t.state.capture()).collect();
    let capture_time = started.elapsed();
    let storage2 = Arc::clone(storage);
    let handles = std::thread::spawn(move || -> Result<Vec<TaskStateEntry>> {
        let mut entries = Vec::new();
        for (i, c) in captures.into_iter().enumerate() {
            let keyed = c.encode()?;
            let range = keyed.range;
            let bytes = TaskSnapshot {
                keyed: Some(keyed),
                operator: Default::default(),
            }
            .to_bytes()?;
            let task = TaskId::new("sum", i as u32)?;
            let state = storage2.write_task_state(id, &task, &bytes)?;
            entries.push(TaskStateEntry {
                task,
                state,
                key_groups: Some(range),
            });
        }
        Ok(entries)
    })
    .join()
    .map_err(|_| snapflow::Error::Config("snapshot writer thread panicked".into()))??;
    let mut manifest = Manifest::new(storage.job(), id, G);
    manifest
        .parallelism
        .insert("sum".into(), tasks.len() as u32);
    manifest.tasks = handles;
    for (p, o) in offsets.iter().enumerate() {
        manifest.sources.push(SourceOffset {
            task: TaskId::new("source", 0)?,
            partition: PartitionId(p as u32),
            offset: *o,
        });
    }
    storage.commit(&manifest)?;
    println!(
        "checkpoint {id}: {} tasks, {} bytes, offsets {:?}, capture on the task {:.2?}, total {:.2?}",
        manifest.tasks.len(),
        manifest.state_bytes(),
        offsets.iter().map(|o| o.0).collect::<Vec<_>>(),
        capture_time,
        started.elapsed()
    );
    Ok(manifest)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let root = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("snapflow-examples")
        .join("log_state_checkpoint");
    let _ = std::fs::remove_dir_all(&root);

    // 1. Write the events.
    let started = Instant::now();
    let file_log = FileLog::open(
        root.join("log"),
        FileLogOptions {
            partitions: PARTITIONS,
            sync: SyncPolicy::Os,
            ..FileLogOptions::default()
        },
    )?;
    let log: Arc<dyn ReplayableLog> = Arc::new(file_log);
    let typed = TypedLog::<Purchase>::new(Arc::clone(&log));
    let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..EVENTS {
        let p = Purchase {
            user: i.wrapping_mul(2_654_435_761) % USERS,
            cents: (i * 7) % 1000 + 1,
        };
        let e = expected.entry(p.user).or_default();
        e.0 += p.cents;
        e.1 += 1;
        batch.push(p);
        if batch.len() == 1000 {
            typed.append_batch(
                PartitionId((i / 1000 % u64::from(PARTITIONS)) as u32),
                &batch,
            )?;
            batch.clear();
        }
    }
    log.sync()?;
    println!(
        "wrote {EVENTS} purchases of {USERS} users to {PARTITIONS} log partitions in {:.2?}",
        started.elapsed()
    );

    // 2. Process half of each partition on 2 tasks, checkpoint, process some more.
    let storage = Arc::new(LocalCheckpointStorage::new(
        root.join("checkpoints"),
        "purchases",
    )?);
    let mut tasks = vec![Task::new(0, 2)?, Task::new(1, 2)?];
    let mut offsets = vec![LogOffset(0); PARTITIONS as usize];
    let half = EVENTS / u64::from(PARTITIONS) / 2;
    let n = run(&typed, &mut tasks, &mut offsets, half)?;
    println!("processed {n} purchases on 2 tasks");
    checkpoint(&storage, CheckpointId(1), &mut tasks, &offsets)?;
    let n = run(&typed, &mut tasks, &mut offsets, half / 2)?;
    println!("processed {n} more purchases, then the process \"crashes\": in-memory state is lost");
    drop(tasks);

    // 3. Recover from the latest complete checkpoint at parallelism 3 and replay.
    let latest = storage
        .latest_complete()?
        .ok_or_else(|| snapflow::Error::Config("no checkpoint".into()))?;
    let mut snapshots = Vec::new();
    for t in &latest.manifest.tasks {
        let bytes = storage.read_task_state(latest.id(), &t.state)?;
        snapshots.extend(TaskSnapshot::from_bytes(&bytes)?.keyed);
    }
    let mut tasks = Vec::new();
    for i in 0..3 {
        let mut t = Task::new(i, 3)?;
        let stats = t.state.restore(snapshots.iter())?;
        println!(
            "task {i} of 3 restored {} key groups from checkpoint {}",
            stats.key_groups,
            latest.id()
        );
        tasks.push(t);
    }
    let mut offsets: Vec<LogOffset> = latest.manifest.sources.iter().map(|s| s.offset).collect();
    println!(
        "sources seek to {:?} and replay",
        offsets.iter().map(|o| o.0).collect::<Vec<_>>()
    );
    let n = run(&typed, &mut tasks, &mut offsets, u64::MAX)?;
    println!("replayed {n} purchases on 3 tasks");
    checkpoint(&storage, CheckpointId(2), &mut tasks, &offsets)?;

    // 4. Verify against the direct computation.
    let mut wrong = 0;
    for (user, (total, count)) in &expected {
        let kg = key_group_for(user, G);
        let t = &mut tasks[task_for_key_group(kg, 3, G) as usize];
        t.state.set_current_key(*user)?;
        let got = (
            t.total.get(&t.state)?.copied(),
            t.count.get(&t.state)?.copied(),
        );
        if got != (Some(*total), Some(*count)) {
            wrong += 1;
        }
    }
    if wrong == 0 {
        println!(
            "verified: all {} users' totals and counts equal the direct computation (exactly once)",
            expected.len()
        );
        Ok(())
    } else {
        println!("FAILED: {wrong} users differ from the direct computation");
        std::process::exit(1);
    }
}
