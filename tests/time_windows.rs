//! Event-time windows equal a batch oracle over out-of-order input, with and without chaos;
//! timers fire exactly once across restores; the minimum-watermark rule with an idle source.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{chaos_config, poll_until, splitmix};
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::{CheckpointStorage, MemoryCheckpointStorage};
use snapflow::prelude::*;
use snapflow::state::{Aggregator, ValueState};
use snapflow::{CollectSink, FileSink};

/// (user, timestamp ms, value)
type Event = (u64, i64, u64);

const USERS: u64 = 6;
const DISORDER: i64 = 40;

/// Events of `partitions` partitions, each a stream whose timestamps advance 0 to 9 ms per
/// event and arrive up to `DISORDER` ms out of order.
fn events(
    seed: u64,
    partitions: u32,
    per_partition: usize,
) -> (Arc<dyn ReplayableLog>, Vec<Event>) {
    let mut rng = seed;
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(partitions));
    let typed = TypedLog::<Event>::new(Arc::clone(&log));
    let mut all = Vec::new();
    for p in 0..partitions {
        let mut t = 0i64;
        let mut batch = Vec::new();
        for _ in 0..per_partition {
            t += (splitmix(&mut rng) % 10) as i64;
            let ts = (t - (splitmix(&mut rng) % DISORDER as u64) as i64).max(0);
            let e = (splitmix(&mut rng) % USERS, ts, 1 + splitmix(&mut rng) % 5);
            batch.push(e);
            all.push(e);
        }
        typed.append_batch(PartitionId(p), &batch).expect("append");
    }
    (log, all)
}

/// Counts and sums values; mergeable for sessions.
#[derive(Clone)]
struct CountSum;

impl Aggregator for CountSum {
    type In = Event;
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), e: Event) {
        acc.0 += 1;
        acc.1 += e.2;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

impl WindowAggregator for CountSum {
    fn merge(&self, acc: &mut (u64, u64), other: (u64, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
}

type Results = BTreeMap<(u64, i64, i64), (u64, u64)>;

/// A window's (count, sum) for one user.
type Counted = WindowResult<u64, (u64, u64)>;

/// What the windows must produce, computed directly from all events.
fn oracle(all: &[Event], assigner: WindowAssigner) -> Results {
    let mut out = Results::new();
    match assigner {
        WindowAssigner::Session { gap } => {
            let mut by_user: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
            for (u, ts, v) in all {
                by_user.entry(*u).or_default().push((*ts, *v));
            }
            for (u, mut evs) in by_user {
                evs.sort_unstable();
                let mut cur: Option<(i64, i64, u64, u64)> = None;
                for (ts, v) in evs {
                    cur = match cur {
                        Some((s, e, c, sum)) if ts <= e => {
                            Some((s, e.max(ts + gap), c + 1, sum + v))
                        }
                        Some((s, e, c, sum)) => {
                            out.insert((u, s, e), (c, sum));
                            Some((ts, ts + gap, 1, v))
                        }
                        None => Some((ts, ts + gap, 1, v)),
                    };
                }
                if let Some((s, e, c, sum)) = cur {
                    out.insert((u, s, e), (c, sum));
                }
            }
        }
        _ => {
            for (u, ts, v) in all {
                for w in assigner.assign(*ts) {
                    let e = out.entry((*u, w.start, w.end)).or_insert((0, 0));
                    e.0 += 1;
                    e.1 += v;
                }
            }
        }
    }
    out
}

fn window_job(
    name: &str,
    config: JobConfig,
    log: Arc<dyn ReplayableLog>,
    assigner: WindowAssigner,
    storage: Arc<dyn CheckpointStorage>,
) -> (JobBuilder, Stream<Counted>) {
    let job = common::memory_job(name, config);
    job.checkpoint_storage(storage);
    let results = job
        .source(
            "events",
            LogSource::<Event>::msgpack(log).bounded().event_time(
                |e: &Event| e.1,
                WatermarkStrategy::BoundedOutOfOrderness(DISORDER),
            ),
        )
        .key_by(|e: &Event| e.0)
        .window(assigner, |e: &Event| e.1)
        .aggregate("windows", CountSum);
    (job, results)
}

fn assigners() -> [WindowAssigner; 3] {
    [
        WindowAssigner::Tumbling { size: 100 },
        WindowAssigner::Sliding {
            size: 100,
            slide: 25,
        },
        WindowAssigner::Session { gap: 30 },
    ]
}

fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("SNAPFLOW_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    0..n
}

#[test]
fn window_results_over_out_of_order_input_equal_a_batch_oracle() {
    for seed in seeds(30) {
        for assigner in assigners() {
            let (log, all) = events(seed, 2, 400);
            let sink = CollectSink::new();
            let mut config = chaos_config(if seed % 2 == 0 {
                Threads::Arbiters(2)
            } else {
                Threads::Current
            });
            config.batch_size = 1 + (seed % 32) as usize;
            let (job, results) = window_job(
                "windows",
                config,
                log,
                assigner,
                Arc::new(MemoryCheckpointStorage::new("windows").expect("storage")),
            );
            results.sink("out", sink.clone());
            let report = job.build().expect("build").run().expect("run");
            let mut got = Results::new();
            for r in sink.records() {
                let prev = got.insert((r.key, r.window.start, r.window.end), r.value);
                assert!(
                    prev.is_none(),
                    "seed {seed} {assigner:?}: window {:?} of {} emitted twice",
                    r.window,
                    r.key
                );
            }
            assert_eq!(
                got,
                oracle(&all, assigner),
                "seed {seed} (SNAPFLOW_SEEDS={}) {assigner:?}",
                seed + 1
            );
            let late: u64 = report.metrics.tasks.iter().map(|t| t.late_records).sum();
            assert_eq!(late, 0, "no record is later than the bound");
        }
    }
}

fn committed(out: &std::path::Path) -> (Results, u64) {
    let mut got = Results::new();
    let mut dups = 0;
    for l in FileSink::<()>::read_committed(out).expect("read") {
        // Sliding windows can start before 0: parse signed.
        let f: Vec<i64> = l.split(' ').map(|x| x.parse().expect("number")).collect();
        if got
            .insert((f[0] as u64, f[1], f[2]), (f[3] as u64, f[4] as u64))
            .is_some()
        {
            dups += 1;
        }
    }
    (got, dups)
}

#[test]
fn window_results_under_chaos_equal_the_oracle_exactly() {
    for seed in seeds(10) {
        for assigner in assigners() {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = dir.path().join("out");
            let (log, all) = events(seed, 2, 1500);
            let storage: Arc<dyn CheckpointStorage> = Arc::new(
                MemoryCheckpointStorage::new("chaos-windows")
                    .expect("storage")
                    .with_retain(1000),
            );
            let (job, results) = window_job(
                "chaos-windows",
                chaos_config(Threads::Arbiters(2)),
                log,
                assigner,
                storage,
            );
            results
                .map("slow", |r: WindowResult<u64, (u64, u64)>| {
                    if r.window.start % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    r
                })
                .sink(
                    "out",
                    FileSink::new(&out, |r: &WindowResult<u64, (u64, u64)>, l: &mut String| {
                        l.push_str(&format!(
                            "{} {} {} {} {}",
                            r.key, r.window.start, r.window.end, r.value.0, r.value.1
                        ))
                    }),
                );
            job.chaos(
                ChaosMonkey::new(seed)
                    .random_interval(Duration::from_millis(5), Duration::from_millis(20))
                    .max_kills(3),
            );
            let report = job
                .build()
                .expect("build")
                .run()
                .unwrap_or_else(|e| panic!("seed {seed} {assigner:?}: {e}"));
            let (got, dups) = committed(&out);
            assert_eq!(
                dups, 0,
                "seed {seed} {assigner:?}: duplicated windows; events {:?}",
                report.events
            );
            assert_eq!(
                got,
                oracle(&all, assigner),
                "seed {seed} {assigner:?}: events {:?}",
                report.events
            );
        }
    }
}

/// Registers an event timer 100 ms after each record's time and emits (key, timer) when it
/// fires; the registered timers are counted in state so a restore shows them.
#[derive(Clone, Default)]
struct Reminders {
    fired: Option<ValueState<u64>>,
}

impl KeyedOperator<u64, Event, (u64, i64)> for Reminders {
    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.fired = Some(ctx.state().value_state("fired")?);
        Ok(())
    }
    fn process(
        &mut self,
        e: Event,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        ctx.register_event_timer(e.1 + 100)
    }
    fn on_timer(
        &mut self,
        ts: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::EventTime);
        assert!(
            ctx.current_watermark() >= ts,
            "a timer fires only once the watermark passed it"
        );
        if let Some(f) = &self.fired {
            *f.get_or_insert_with(ctx.state(), || 0)? += 1;
        }
        let key = *ctx
            .current_key()
            .ok_or_else(|| Error::Internal("no key".into()))?;
        out.emit((key, ts));
        Ok(())
    }
}

#[test]
fn timers_restored_from_a_checkpoint_fire_exactly_once() {
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let (log, all) = events(100 + seed, 2, 2000);
        let job = common::memory_job("timers", chaos_config(Threads::Arbiters(2)));
        job.checkpoint_storage(Arc::new(
            MemoryCheckpointStorage::new("timers")
                .expect("storage")
                .with_retain(1000),
        ));
        job.source(
            "events",
            LogSource::<Event>::msgpack(log).bounded().event_time(
                |e: &Event| e.1,
                WatermarkStrategy::BoundedOutOfOrderness(DISORDER),
            ),
        )
        // Slow enough (about 60 ms of sleeps) that the run outlasts the monkey's first interval
        // in release builds too.
        .map("slow", |e: Event| {
            if e.1 % 10 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
            e
        })
        .key_by(|e: &Event| e.0)
        .process("reminders", Reminders::default())
        .sink(
            "out",
            FileSink::new(&out, |(k, t): &(u64, i64), l: &mut String| {
                l.push_str(&format!("{k} {t}"))
            }),
        );
        job.chaos(
            ChaosMonkey::new(seed)
                .random_interval(Duration::from_millis(10), Duration::from_millis(25))
                .kills(vec![Kill::StopFromOutside, Kill::PanicInUserCode])
                .only_vertices(&["reminders"])
                .max_kills(3),
        );
        let report = job.build().expect("build").run().expect("run");
        assert!(
            report.restarts >= 1,
            "seed {seed}: no restart happened: {:?}",
            report.events
        );
        let mut fired: BTreeMap<(u64, i64), u64> = BTreeMap::new();
        for l in FileSink::<()>::read_committed(&out).expect("read") {
            let (k, t) = l.split_once(' ').expect("line");
            *fired
                .entry((k.parse().expect("key"), t.parse().expect("ts")))
                .or_insert(0) += 1;
        }
        let expected: BTreeMap<(u64, i64), u64> =
            all.iter().map(|(k, ts, _)| ((*k, ts + 100), 1)).collect();
        assert_eq!(
            fired, expected,
            "seed {seed}: every timer fired exactly once"
        );
    }
}

#[actix_rt::test]
async fn the_watermark_is_the_minimum_across_a_union_and_an_idle_source_does_not_hold_it_back() {
    // Source A: events up to 10 s. Source B: events up to 3 s, then nothing.
    let a: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let b: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let ta = TypedLog::<Event>::new(Arc::clone(&a));
    let tb = TypedLog::<Event>::new(Arc::clone(&b));
    let ea: Vec<Event> = (0..1000).map(|i| (1, i * 10, 1)).collect();
    let eb: Vec<Event> = (0..300).map(|i| (2, i * 10, 1)).collect();
    ta.append_batch(PartitionId(0), &ea).expect("append");
    tb.append_batch(PartitionId(0), &eb).expect("append");
    let run = |idle_timeout: Duration| {
        let sink = CollectSink::<WindowResult<u64, (u64, u64)>>::new();
        let mut config = chaos_config(Threads::Arbiters(2));
        config.idle_timeout = idle_timeout;
        config.parallelism = 1;
        let job = common::memory_job("union", config);
        let strategy = WatermarkStrategy::BoundedOutOfOrderness(0);
        let sa = job.source(
            "a",
            LogSource::<Event>::msgpack(Arc::clone(&a)).event_time(|e: &Event| e.1, strategy),
        );
        let sb = job.source(
            "b",
            LogSource::<Event>::msgpack(Arc::clone(&b)).event_time(|e: &Event| e.1, strategy),
        );
        sa.union(sb)
            .key_by(|e: &Event| e.0)
            .window(WindowAssigner::Tumbling { size: 1000 }, |e: &Event| e.1)
            .aggregate("windows", CountSum)
            .sink("out", sink.clone());
        (job, sink)
    };
    // B never idles: the union's watermark is B's (about 3 s); nothing of A after it fires.
    let (job, sink) = run(Duration::from_secs(3600));
    let handle = job.build().expect("build").start().await.expect("start");
    assert!(
        poll_until(Duration::from_secs(10), || sink
            .records()
            .iter()
            .any(|r| r.window.end == 2000))
        .await
    );
    actix::clock::sleep(Duration::from_millis(300)).await;
    let latest = sink
        .records()
        .iter()
        .map(|r| r.window.end)
        .max()
        .unwrap_or(0);
    assert!(
        latest <= 3000,
        "a window ending at {latest} fired although source B's watermark is below it"
    );
    handle.cancel();
    let _ = handle.wait().await;
    // B idles after 100 ms without data: A's watermark alone drives the windows.
    let (job, sink) = run(Duration::from_millis(100));
    let handle = job.build().expect("build").start().await.expect("start");
    assert!(
        poll_until(Duration::from_secs(10), || sink
            .records()
            .iter()
            .any(|r| r.window.end == 9000))
        .await,
        "an idle source held the watermark back"
    );
    handle.cancel();
    let _ = handle.wait().await;
    let nine = sink
        .records()
        .into_iter()
        .find(|r| r.window.end == 9000)
        .expect("window");
    assert_eq!((nine.key, nine.value.0), (1, 100));
}

#[test]
fn records_beyond_the_allowed_lateness_are_counted_and_sent_to_a_side_log() {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let typed = TypedLog::<Event>::new(Arc::clone(&log));
    // In order up to 5 s, then one record at 1.5 s (its window [1000, 2000) closed long ago), then
    // one at 4.95 s (within the lateness of [4000, 5000) when the watermark is about 5.03 s).
    let mut evs: Vec<Event> = (0..=500).map(|i| (1, i * 10, 1)).collect();
    evs.push((1, 5030, 1));
    evs.push((1, 1500, 7));
    evs.push((1, 4950, 1));
    typed.append_batch(PartitionId(0), &evs).expect("append");
    let side: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let sink = CollectSink::<WindowResult<u64, (u64, u64)>>::new();
    let mut config = chaos_config(Threads::Current);
    config.parallelism = 1;
    // A watermark after every record, so that lateness is decided record by record.
    config.batch_size = 1;
    config.watermark_interval = Duration::ZERO;
    let job = common::memory_job("late", config);
    job.source(
        "events",
        LogSource::<Event>::msgpack(log)
            .bounded()
            .event_time(|e: &Event| e.1, WatermarkStrategy::Monotonous),
    )
    .key_by(|e: &Event| e.0)
    .window(WindowAssigner::Tumbling { size: 1000 }, |e: &Event| e.1)
    .allowed_lateness(200)
    .late_records_to(Arc::clone(&side))
    .aggregate("windows", CountSum)
    .sink("out", sink.clone());
    let report = job.build().expect("build").run().expect("run");
    let late: u64 = report.metrics.tasks.iter().map(|t| t.late_records).sum();
    assert_eq!(late, 1);
    let sent = TypedLog::<snapflow::runtime::LateRecord>::new(side)
        .read(PartitionId(0), LogOffset(0), 10)
        .expect("read");
    let records: Vec<Event> = sent
        .iter()
        .map(|(_, l)| l.decode_record().expect("decode"))
        .collect();
    assert_eq!(records, vec![(1, 1500, 7)]);
    assert_eq!(sent[0].1.timestamp, 1500);
    assert!(sent[0].1.watermark >= 4999, "{:?}", sent[0].1);
    // [4000, 5000) fired with 100 records, then again with the late one within its lateness.
    let fours: Vec<(u64, u64)> = sink
        .records()
        .iter()
        .filter(|r| r.window.start == 4000)
        .map(|r| r.value)
        .collect();
    assert_eq!(fours, vec![(100, 100), (101, 101)], "{fours:?}");
    let _ = Ordering::Relaxed;
}

/// Registers a processing-time timer 30 ms ahead for each record and emits the key when it
/// fires.
#[derive(Clone)]
struct Later;

impl KeyedOperator<u64, Event, u64> for Later {
    fn process(
        &mut self,
        _e: Event,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<u64>,
    ) -> Result<()> {
        let at = ctx.current_processing_time() + 30;
        ctx.register_processing_timer(at)
    }
    fn on_timer(
        &mut self,
        ts: Timestamp,
        domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<u64>,
    ) -> Result<()> {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        assert!(ctx.current_processing_time() >= ts);
        out.emit(
            *ctx.current_key()
                .ok_or_else(|| Error::Internal("no key".into()))?,
        );
        Ok(())
    }
}

#[actix_rt::test]
async fn processing_time_timers_fire_once_their_time_has_passed() {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let typed = TypedLog::<Event>::new(Arc::clone(&log));
    typed
        .append_batch(PartitionId(0), &[(1, 0, 1), (2, 0, 1), (1, 5, 1)])
        .expect("append");
    let sink = CollectSink::<u64>::new();
    let mut config = chaos_config(Threads::Current);
    config.parallelism = 1;
    let job = common::memory_job("proc", config);
    job.source("events", LogSource::<Event>::msgpack(log))
        .key_by(|e: &Event| e.0)
        .process("later", Later)
        .sink("out", sink.clone());
    let handle = job.build().expect("build").start().await.expect("start");
    assert!(
        poll_until(Duration::from_secs(5), || sink.records().len() >= 2).await,
        "the timers never fired"
    );
    actix::clock::sleep(Duration::from_millis(100)).await;
    handle.cancel();
    let _ = handle.wait().await;
    let mut keys = sink.records();
    keys.sort_unstable();
    // Key 1 registered its timer twice within the same millisecond or two: one timer per
    // timestamp per key, so 2 or 3 firings, never more.
    assert!(keys.len() == 2 || keys.len() == 3, "{keys:?}");
    assert!(keys.contains(&1) && keys.contains(&2));
}
