//! Side outputs under kills: dead letters and late records go through the checkpoint's
//! two-phase commit, so the replays that follow random kills never write one twice.
//!
//! Seeds: `0..SNAPFLOW_CHAOS_SEEDS` (default 8), or `SNAPFLOW_CHAOS_SEED` alone; a failing run
//! names its seed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{chaos_config, Stage};
use snapflow::chaos::ChaosMonkey;
use snapflow::prelude::*;
use snapflow::runtime::{DeadLetter, LateRecord};

fn seed_range() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    match var("SNAPFLOW_CHAOS_SEED") {
        Some(s) => s..s + 1,
        None => 0..var("SNAPFLOW_CHAOS_SEEDS").unwrap_or(8),
    }
}

fn monkey(seed: u64) -> ChaosMonkey {
    ChaosMonkey::new(seed)
        .random_interval(Duration::from_millis(5), Duration::from_millis(25))
        .max_kills(4)
}

/// Every record of every partition of `log`, decoded as `T`.
fn all<T: serde::Serialize + serde::de::DeserializeOwned>(log: &Arc<dyn ReplayableLog>) -> Vec<T> {
    let typed = TypedLog::<T>::new(Arc::clone(log));
    let mut out = Vec::new();
    for p in 0..log.partitions() {
        let p = PartitionId(p);
        let end = log.end_offset(p).expect("end").0 as usize;
        let batch = typed.read(p, LogOffset(0), end.max(1)).expect("read");
        out.extend(batch.into_iter().map(|(_, r)| r));
    }
    out
}

/// How often each value occurs.
fn counts(values: impl IntoIterator<Item = u64>) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for v in values {
        *m.entry(v).or_insert(0) += 1;
    }
    m
}

/// Fails (an error, not a panic) on every value divisible by 50.
#[derive(Clone)]
struct Picky;

impl KeyedOperator<u64, (u64, u64), (u64, u64)> for Picky {
    fn process(
        &mut self,
        r: (u64, u64),
        _ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        if r.1 % 50 == 0 {
            return Err(Error::Internal(format!("value {} refused", r.1)));
        }
        out.emit(r);
        Ok(())
    }
}

#[test]
fn dead_letters_are_written_exactly_once_under_random_kills() {
    let n = 12_000u64;
    let expected: BTreeMap<u64, u64> = (0..n).filter(|v| v % 50 == 0).map(|v| (v, 1)).collect();
    let mut kills = 0;
    for seed in seed_range() {
        let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
        let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
        for i in 0..n {
            typed
                .append(PartitionId((i % 2) as u32), &(i % 20, i))
                .expect("append");
        }
        let dead: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
        let job = common::memory_job(&format!("dead-{seed}"), chaos_config(Threads::Arbiters(2)));
        job.source("source", LogSource::<(u64, u64)>::msgpack(log).bounded())
            .process("stage", Stage::new(150))
            .dead_letter(Arc::clone(&dead))
            .key_by(|r: &(u64, u64)| r.0)
            .process("picky", Picky)
            .sink("sink", CollectSink::new());
        job.chaos(monkey(seed));
        let report = job.build().expect("build").run().unwrap_or_else(|e| {
            panic!("seed {seed} (rerun with SNAPFLOW_CHAOS_SEED={seed}): the job failed: {e}")
        });
        kills += report.kills;
        let letters: Vec<DeadLetter> = all(&dead);
        let got = counts(letters.iter().map(|l| {
            let (_, v): (u64, u64) = l.decode_record().expect("a letter's record");
            assert!(l.error.contains("refused"), "{}", l.error);
            v
        }));
        assert_eq!(
            got, expected,
            "seed {seed} (rerun with SNAPFLOW_CHAOS_SEED={seed}): {} kills, {} restarts",
            report.kills, report.restarts
        );
    }
    let seeds = seed_range();
    assert!(
        u64::from(kills) >= seeds.end - seeds.start,
        "only {kills} kills over {seeds:?}"
    );
}

/// (key, event time, id).
type Event = (u64, i64, u64);

/// Every 100th record is a candidate late record: 5 s behind the others, so its window closed
/// long before it arrives.
fn is_candidate(id: u64) -> bool {
    id % 100 == 99
}

#[test]
fn late_records_are_never_written_twice_under_random_kills() {
    let n = 4_000u64;
    let candidates = (0..n).filter(|i| is_candidate(*i)).count() as u64;
    let mut restarts = 0;
    for seed in seed_range() {
        let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
        let typed = TypedLog::<Event>::new(Arc::clone(&log));
        let events: Vec<Event> = (0..n)
            .map(|i| {
                let ts = i as i64 * 10;
                (i % 4, if is_candidate(i) { ts - 5_000 } else { ts }, i)
            })
            .collect();
        typed.append_batch(PartitionId(0), &events).expect("append");
        let late: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
        let mut config = chaos_config(Threads::Arbiters(2));
        config.parallelism = 1;
        // A watermark after every record, so that lateness is decided record by record.
        config.batch_size = 1;
        config.watermark_interval = Duration::ZERO;
        let job = common::memory_job(&format!("late-{seed}"), config);
        job.source(
            "events",
            LogSource::<Event>::msgpack(log)
                .bounded()
                .event_time(|e: &Event| e.1, WatermarkStrategy::Monotonous),
        )
        .map("slow", |e: Event| {
            if e.2 % 40 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            e
        })
        .key_by(|e: &Event| e.0)
        .window(WindowAssigner::Tumbling { size: 1000 }, |e: &Event| e.1)
        .late_records_to(Arc::clone(&late))
        .reduce("windows", |a, b| (a.0, a.1.max(b.1), a.2 + b.2))
        .sink("out", CollectSink::new());
        job.chaos(monkey(seed));
        let report = job.build().expect("build").run().unwrap_or_else(|e| {
            panic!("seed {seed} (rerun with SNAPFLOW_CHAOS_SEED={seed}): the job failed: {e}")
        });
        restarts += report.restarts;
        let written: Vec<LateRecord> = all(&late);
        let ids = counts(written.iter().map(|l| {
            let e: Event = l.decode_record().expect("a late record");
            e.2
        }));
        let rerun = format!("seed {seed} (rerun with SNAPFLOW_CHAOS_SEED={seed})");
        let twice: Vec<_> = ids.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "{rerun}: written twice: {twice:?}");
        assert!(
            ids.keys().all(|id| is_candidate(*id)),
            "{rerun}: a record that was not late: {ids:?}"
        );
        // The watermark starts over after a restore, so the first record a restarted window
        // task sees is never late: each restart may let one candidate through, no more.
        let missing = candidates - ids.len() as u64;
        assert!(
            missing <= u64::from(report.restarts),
            "{rerun}: {missing} of {candidates} late records missing after {} restarts",
            report.restarts
        );
    }
    let seeds = seed_range();
    assert!(
        u64::from(restarts) >= seeds.end - seeds.start,
        "only {restarts} restarts over {seeds:?}"
    );
}
