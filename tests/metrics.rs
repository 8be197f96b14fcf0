//! Job metrics as a user reads them through `JobHandle::metrics`: backpressure is near 0 for a
//! job whose source is slower than its sink and near 1 in front of a deliberately slow sink;
//! source offsets and lag follow the log; the graph, restarts, failures by class and the
//! timeline show what happened.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snapflow::checkpoint::{CheckpointId, CheckpointTiming};
use snapflow::log::GeneratorLog;
use snapflow::metrics::{MetricsSnapshot, Partitioning, VertexKind};
use snapflow::prelude::*;
use snapflow::{MemoryLog, TwoPhaseCommitSink};

/// A sink that sleeps `delay` per record.
#[derive(Clone)]
struct Sleepy {
    delay: Duration,
    count: Arc<AtomicU64>,
}

impl TwoPhaseCommitSink<u64> for Sleepy {
    type Txn = ();
    fn begin(&mut self, _e: CheckpointId) -> Result<()> {
        Ok(())
    }
    fn write(&mut self, _x: u64) -> Result<()> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn pre_commit(&mut self, _e: CheckpointId) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self, _t: &()) -> Result<()> {
        Ok(())
    }
    fn recover(&mut self, _c: &[()]) -> Result<()> {
        Ok(())
    }
}

fn config() -> JobConfig {
    JobConfig {
        parallelism: 1,
        batch_size: 64,
        channel_capacity: 4,
        threads: Threads::Arbiters(3),
        checkpoints: CheckpointTiming::every(Duration::from_millis(200)),
        ..JobConfig::default()
    }
}

fn task<'a>(m: &'a MetricsSnapshot, vertex: &str) -> &'a snapflow::metrics::TaskMetrics {
    m.tasks
        .iter()
        .find(|t| t.task.vertex == vertex)
        .unwrap_or_else(|| panic!("no task of vertex {vertex} in {:?}", m.tasks))
}

/// Reads the metrics every 300 ms for `d` and returns every reading.
async fn readings(handle: &JobHandle, d: Duration) -> Vec<MetricsSnapshot> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(300)).await;
        out.push(handle.metrics());
    }
    out
}

#[actix_rt::test]
async fn a_task_in_front_of_a_slow_sink_is_backpressured_above_0_8() {
    let job = common::memory_job("bp-slow-sink", config());
    let numbers = GeneratorLog::numbers(1, None);
    let count = Arc::new(AtomicU64::new(0));
    job.source(
        "numbers",
        LogSource::with_decoder(Arc::new(numbers), GeneratorLog::number),
    )
    .map("relay", |x: u64| x)
    .sink(
        "slow",
        Sleepy {
            delay: Duration::from_micros(200),
            count: Arc::clone(&count),
        },
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let all = readings(&handle, Duration::from_secs(4)).await;
    handle.cancel();
    handle.wait().await.expect("cancelled");
    let last = all.last().expect("a reading");
    let relay = task(last, "relay");
    assert!(
        relay.backpressure_ratio > 0.8,
        "the relay in front of the slow sink waited only {:.3} of the time: {relay:?}",
        relay.backpressure_ratio
    );
    let sink = task(last, "slow");
    assert!(
        sink.backpressure_ratio < 0.1,
        "the sink has no output to wait on: {sink:?}"
    );
    assert!(
        sink.busy_ratio > 0.5,
        "the slow sink is busy most of the time: {sink:?}"
    );
    assert!(
        relay.input_queued > 0 && relay.input_queued <= relay.input_capacity,
        "the relay's input queue is filled up to its capacity: {relay:?}"
    );
    assert!(count.load(Ordering::Relaxed) > 0, "the sink wrote records");
}

#[actix_rt::test]
async fn a_rate_limited_source_below_the_sink_capacity_is_not_backpressured() {
    let job = common::memory_job("bp-rate-limited", config());
    let log = Arc::new(MemoryLog::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let bytes = snapflow::codec::encode(&i, "record").expect("encode");
                    log.append(PartitionId(0), &bytes).expect("append");
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            i
        })
    };
    let count = Arc::new(AtomicU64::new(0));
    job.source("paced", LogSource::<u64>::msgpack(log.clone()))
        .map("relay", |x: u64| x)
        .sink(
            "fast",
            Sleepy {
                delay: Duration::ZERO,
                count: Arc::clone(&count),
            },
        );
    let handle = job.build().expect("build").start().await.expect("start");
    let all = readings(&handle, Duration::from_secs(4)).await;
    handle.cancel();
    handle.wait().await.expect("cancelled");
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().expect("writer");
    let last = all.last().expect("a reading");
    for t in &last.tasks {
        assert!(
            t.backpressure_ratio < 0.1,
            "task {} waited {:.3} of the time on its output: {t:?}",
            t.task,
            t.backpressure_ratio
        );
    }
    let source = task(last, "paced");
    assert!(
        source.records_in_per_second > 100.0,
        "the rate window covered traffic: {source:?}"
    );
    // Offsets and lag of the source's partition follow the log.
    let part = last
        .sources
        .iter()
        .find(|s| s.task.vertex == "paced")
        .expect("the source's partition");
    let end = part.end_offset.expect("the memory log's end offset");
    assert!(
        part.offset <= end && end <= appended,
        "offset {} <= end {end} <= appended {appended}",
        part.offset
    );
    assert_eq!(part.lag, Some(end - part.offset));
}

#[actix_rt::test]
async fn the_graph_restarts_failures_by_class_and_the_timeline_show_a_failed_task() {
    let job = common::memory_job("metrics-history", config());
    let numbers = GeneratorLog::numbers(1, Some(20_000));
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&failed_once);
    let count = Arc::new(AtomicU64::new(0));
    job.source(
        "events",
        LogSource::with_decoder(Arc::new(numbers), GeneratorLog::number).bounded(),
    )
    .map("boom", move |x: u64| {
        if x == 5_000 && !flag.swap(true, Ordering::Relaxed) {
            panic!("an injected failure");
        }
        x
    })
    .rebalance()
    .sink(
        "out",
        Sleepy {
            delay: Duration::ZERO,
            count: Arc::clone(&count),
        },
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let graph = handle.graph();
    let names: Vec<&str> = graph.vertices.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["events", "boom", "out"]);
    assert_eq!(graph.vertices[0].kind, VertexKind::Source);
    assert_eq!(graph.vertices[2].kind, VertexKind::Sink);
    assert_eq!(graph.edges.len(), 2);
    assert_eq!(graph.edges[1].partitioning, Partitioning::Rebalance);
    let report = handle.wait().await.expect("the job recovers and ends");
    let m = &report.metrics;
    assert!(
        failed_once.load(Ordering::Relaxed),
        "the failure was injected"
    );
    assert_eq!(
        m.failures.restart, 1,
        "one failure classed Restart: {:?}",
        m.failures
    );
    assert_eq!(m.failures.total(), 1);
    assert_eq!(m.exceptions.len(), 1);
    assert!(m.exceptions[0].message.contains("an injected failure"));
    assert_eq!(
        m.exceptions[0].task.as_ref().map(|t| t.vertex.as_str()),
        Some("boom")
    );
    assert_eq!(m.region_restarts + m.job_restarts, 1);
    assert_eq!(
        m.restarts.len(),
        1,
        "one restore recorded: {:?}",
        m.restarts
    );
    assert!(
        m.timeline
            .iter()
            .any(|e| matches!(e.event, JobEvent::TaskFailed { .. }))
            && m.timeline
                .iter()
                .any(|e| matches!(e.event, JobEvent::Restored { .. })),
        "the timeline shows the failure and the restore: {:?}",
        m.timeline
    );
    // Counts sum over restarts: the replay read part of the log again.
    assert!(task(m, "events").records_in > 20_000);
    assert!(count.load(Ordering::Relaxed) >= 20_000);
}
