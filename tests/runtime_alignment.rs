//! Aligned checkpoints capture exactly the records before the barrier on every input, and
//! channels are FIFO.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snapflow::checkpoint::{CheckpointStorage, CheckpointTiming, MemoryCheckpointStorage};
use snapflow::prelude::*;
use snapflow::state::{KeyedStateBackend, ValueState};
use snapflow::{CollectSink, TypedLog};

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const KEYS: u64 = 16;

/// Sums values per key; emits the new sum.
#[derive(Clone, Default)]
struct Sum {
    sum: Option<ValueState<(u64, u64)>>,
}

impl KeyedOperator<u64, (u64, u64), (u64, u64)> for Sum {
    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.sum = Some(ctx.state().value_state("sum")?);
        Ok(())
    }

    fn process(
        &mut self,
        (k, v): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if let Some(s) = &self.sum {
            let e = s.get_or_insert_with(ctx.state(), || (0, 0))?;
            e.0 += v;
            e.1 += 1;
            out.emit((k, e.0));
        }
        Ok(())
    }
}

/// Every record of each partition, in offset order.
type Records = Vec<Vec<(u64, u64)>>;

/// A log of `(key, value)` records with `partitions` partitions.
fn make_log(rng: &mut u64, partitions: u32, n: u64) -> (Arc<dyn ReplayableLog>, Records) {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(partitions));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    let mut records = vec![Vec::new(); partitions as usize];
    for _ in 0..n {
        let p = (splitmix(rng) % u64::from(partitions)) as usize;
        let r = (splitmix(rng) % KEYS, splitmix(rng) % 1000);
        typed.append(PartitionId(p as u32), &r).expect("append");
        records[p].push(r);
    }
    (log, records)
}

/// The seeds to run: `SNAPFLOW_SEED` alone, or `0..SNAPFLOW_SEEDS` (default 50).
fn seeds() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    match var("SNAPFLOW_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..var("SNAPFLOW_SEEDS").unwrap_or(50),
    }
}

fn check_seed(seed: u64) -> std::result::Result<usize, String> {
    let mut rng = seed;
    // Enough records that most runs span several checkpoints in release builds too: barriers
    // wait behind the queued records of the slow path, so the count of periodic checkpoints
    // grows with the input, not with the per-record work (the assertion at the end needs
    // about two per seed).
    let (na, nb) = (
        2_000 + splitmix(&mut rng) % 6_000,
        2_000 + splitmix(&mut rng) % 6_000,
    );
    let (log_a, rec_a) = make_log(&mut rng, 2, na);
    let (log_b, rec_b) = make_log(&mut rng, 1, nb);
    let spin = splitmix(&mut rng) % 3_000;
    let config = JobConfig {
        parallelism: 1 + (splitmix(&mut rng) % 3) as u32,
        batch_size: 1 + (splitmix(&mut rng) % 16) as usize,
        channel_capacity: 1 + (splitmix(&mut rng) % 4) as usize,
        threads: if seed % 2 == 0 {
            Threads::Arbiters(2)
        } else {
            Threads::Current
        },
        checkpoints: CheckpointTiming::every(Duration::from_millis(1)),
        ..JobConfig::default()
    };
    let storage = Arc::new(
        MemoryCheckpointStorage::new("align")
            .map_err(|e| e.to_string())?
            .with_retain(100_000),
    );
    let job = common::memory_job("align", config);
    job.checkpoint_storage(storage.clone());
    // Input A goes through a deliberately slow operator; input B arrives directly: the two
    // race, and their barriers reach the keyed operator at different times.
    let a = job
        .source(
            "source-a",
            LogSource::<(u64, u64)>::msgpack(log_a).bounded(),
        )
        .parallelism(2)
        .map("slow-a", move |r: (u64, u64)| {
            let mut x = r.1;
            for _ in 0..spin {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            std::hint::black_box(x);
            r
        })
        .parallelism(1);
    let b = job
        .source(
            "source-b",
            LogSource::<(u64, u64)>::msgpack(log_b).bounded(),
        )
        .parallelism(1);
    a.union(b)
        .key_by(|(k, _): &(u64, u64)| *k)
        .process("sum", Sum::default())
        .sink("out", CollectSink::new());
    job.build()
        .map_err(|e| e.to_string())?
        .run()
        .map_err(|e| e.to_string())?;

    let ids = storage.completed_ids().map_err(|e| e.to_string())?;
    for id in &ids {
        let cp = storage.verify(*id).map_err(|e| e.to_string())?;
        // The fold of exactly the records before the barrier on every source partition.
        let mut expected: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for s in &cp.manifest.sources {
            let recs = match s.task.vertex.as_str() {
                "source-a" => &rec_a[s.partition.0 as usize],
                _ => &rec_b[s.partition.0 as usize],
            };
            for (k, v) in &recs[..s.offset.0 as usize] {
                let e = expected.entry(*k).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let mut snaps = Vec::new();
        for t in cp.manifest.tasks.iter().filter(|t| t.task.vertex == "sum") {
            let bytes = storage
                .read_task_state(*id, &t.state)
                .map_err(|e| e.to_string())?;
            snaps.extend(
                TaskSnapshot::from_bytes(&bytes)
                    .map_err(|e| e.to_string())?
                    .keyed,
            );
        }
        let mut b =
            KeyedStateBackend::<u64>::new(KeyGroupRange::all(128).map_err(|e| e.to_string())?, 128)
                .map_err(|e| e.to_string())?;
        b.restore(snaps.iter()).map_err(|e| e.to_string())?;
        let sum = b
            .value_state::<(u64, u64)>("sum")
            .map_err(|e| e.to_string())?;
        let got: BTreeMap<u64, (u64, u64)> = sum
            .entries(&b)
            .map_err(|e| e.to_string())?
            .map(|(k, v)| (*k, *v))
            .collect();
        if got != expected {
            return Err(format!("checkpoint {id}: restored state {got:?} differs from the fold before the barrier {expected:?}"));
        }
    }
    Ok(ids.len())
}

#[test]
fn barrier_alignment_never_mixes_epochs() {
    let mut checkpoints = 0;
    let seeds = seeds();
    for seed in seeds.clone() {
        match check_seed(seed) {
            Ok(n) => checkpoints += n,
            Err(e) => panic!("seed {seed} (rerun with SNAPFLOW_SEED={seed}): {e}"),
        }
    }
    assert!(
        checkpoints as u64 >= 2 * (seeds.end - seeds.start),
        "only {checkpoints} checkpoints were checked"
    );
}

/// Records `(task, upstream partition, sequence)` for every record it sees.
#[derive(Clone)]
struct Recorder(Arc<Mutex<Vec<(u32, u64, u64)>>>);

impl Operator<(u64, u64), (u64, u64)> for Recorder {
    fn process(
        &mut self,
        r: (u64, u64),
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        let task = ctx.task().task.index;
        self.0
            .lock()
            .map_err(|_| Error::Internal("poisoned".into()))?
            .push((task, r.0, r.1));
        out.emit(r);
        Ok(())
    }
}

#[test]
fn fifo_holds_per_channel() {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    for seq in 0..3000u64 {
        for p in 0..2u32 {
            typed
                .append(PartitionId(p), &(u64::from(p), seq))
                .expect("append");
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = JobConfig {
        parallelism: 3,
        batch_size: 7,
        channel_capacity: 2,
        ..JobConfig::default()
    };
    let job = common::memory_job("fifo", config);
    job.source("src", LogSource::<(u64, u64)>::msgpack(log).bounded())
        .parallelism(2)
        .rebalance()
        .process("record", Recorder(Arc::clone(&seen)))
        .sink("out", CollectSink::new());
    job.build().expect("build").run().expect("run");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 6000);
    let mut last: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for (task, partition, seq) in seen {
        if let Some(prev) = last.insert((task, partition), seq) {
            assert!(
                seq > prev,
                "task {task} saw partition {partition} seq {seq} after {prev}"
            );
        }
    }
}
