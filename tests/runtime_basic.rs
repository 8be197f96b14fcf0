//! End-to-end runs of small bounded jobs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::{CollectSink, FileSink, TypedLog};

fn words_log(lines: &[&str], partitions: u32) -> Arc<dyn ReplayableLog> {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(partitions));
    let typed = TypedLog::<String>::new(Arc::clone(&log));
    for (i, l) in lines.iter().enumerate() {
        typed
            .append(PartitionId(i as u32 % partitions), &l.to_string())
            .expect("append");
    }
    log
}

fn config(threads: Threads) -> JobConfig {
    JobConfig {
        parallelism: 2,
        threads,
        batch_size: 4,
        checkpoints: CheckpointTiming::every(Duration::from_millis(20))
            .with_timeout(Duration::from_secs(10)),
        ..JobConfig::default()
    }
}

fn run_wordcount(threads: Threads) -> BTreeMap<String, u64> {
    let lines: Vec<String> = (0..500)
        .map(|i| format!("w{} w{} common", i % 7, i % 3))
        .collect();
    let refs: Vec<&str> = lines.iter().map(|s| s.as_str()).collect();
    let log = words_log(&refs, 3);
    let job = common::memory_job("wc", config(threads));
    let sink = CollectSink::<(String, u64)>::new();
    job.source("lines", LogSource::<String>::msgpack(log).bounded())
        .flat_map("split", |line: String, out| {
            for w in line.split_whitespace() {
                out.emit((w.to_string(), 1u64));
            }
        })
        .key_by(|(w, _): &(String, u64)| w.clone())
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("out", sink.clone());
    let report = job.build().expect("build").run().expect("run");
    assert!(
        report.checkpoints_completed >= 1,
        "at least the final checkpoint"
    );
    let mut finals = BTreeMap::new();
    for (w, c) in sink.records() {
        let e = finals.entry(w).or_insert(0);
        *e = (*e).max(c);
    }
    finals
}

#[test]
fn a_bounded_wordcount_counts_every_word_on_one_thread_and_on_two() {
    for threads in [Threads::Current, Threads::Arbiters(2)] {
        let counts = run_wordcount(threads);
        assert_eq!(counts.get("common"), Some(&500), "{threads:?}");
        assert_eq!(counts.get("w0").copied(), Some(72 + 167), "{threads:?}");
        assert_eq!(counts.values().sum::<u64>(), 500 + 500 + 500, "{threads:?}");
    }
}

#[test]
fn the_file_sink_commits_every_record_of_a_bounded_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = words_log(&["a b", "c d", "e f"], 2);
    let job = common::memory_job("fs", config(Threads::Arbiters(2)));
    let out = dir.path().join("out");
    job.source("lines", LogSource::<String>::msgpack(log).bounded())
        .flat_map("split", |line: String, out| {
            for w in line.split_whitespace() {
                out.emit(w.to_string());
            }
        })
        .sink(
            "files",
            FileSink::new(&out, |w: &String, line: &mut String| line.push_str(w)),
        );
    job.build().expect("build").run().expect("run");
    let mut lines = FileSink::<String>::read_committed(&out).expect("read");
    lines.sort();
    assert_eq!(lines, vec!["a", "b", "c", "d", "e", "f"]);
}

#[test]
fn a_broadcast_edge_gives_every_task_every_record_and_linger_batches_still_arrive() {
    let log = words_log(&["x", "y", "z"], 1);
    let seen = CollectSink::<(u32, String)>::new();
    let mut cfg = config(Threads::Arbiters(2));
    cfg.linger = Duration::from_millis(3);
    let job = common::memory_job("bc", cfg);
    job.source("lines", LogSource::<String>::msgpack(log).bounded())
        .parallelism(1)
        .broadcast()
        .process("tag", Tag)
        .parallelism(3)
        .sink("out", seen.clone());
    job.build().expect("build").run().expect("run");
    let mut got = seen.records();
    got.sort();
    let mut want = Vec::new();
    for t in 0..3 {
        for w in ["x", "y", "z"] {
            want.push((t, w.to_string()));
        }
    }
    assert_eq!(got, want);
}

/// Tags each record with the index of the task that saw it.
#[derive(Clone)]
struct Tag;

impl Operator<String, (u32, String)> for Tag {
    fn process(
        &mut self,
        r: String,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<(u32, String)>,
    ) -> Result<()> {
        out.emit((ctx.task().task.index, r));
        Ok(())
    }
}

#[actix_rt::test]
async fn an_on_demand_checkpoint_completes_when_periodic_checkpoints_are_off() {
    let log = words_log(&["a"], 1);
    let mut cfg = config(Threads::Current);
    cfg.checkpoints.interval = None;
    let job = common::memory_job("ondemand", cfg);
    job.source("lines", LogSource::<String>::msgpack(log))
        .sink("out", CollectSink::new());
    let handle = job.build().expect("build").start().await.expect("start");
    handle.trigger_checkpoint();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle.metrics().checkpoints.is_empty() && std::time::Instant::now() < deadline {
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        handle.metrics().checkpoints.len(),
        1,
        "exactly the requested checkpoint"
    );
    handle.stop();
    let report = handle.wait().await.expect("stop");
    assert_eq!(
        report.checkpoints_completed, 2,
        "the requested one and the final one"
    );
}

#[actix_rt::test]
async fn metrics_and_events_keep_bounded_windows_and_count_the_rest() {
    let log = words_log(&["a"], 1);
    let mut cfg = config(Threads::Current);
    cfg.checkpoints = CheckpointTiming::every(Duration::from_millis(2));
    cfg.metrics_window = 3;
    cfg.event_window = 5;
    let job = common::memory_job("windows", cfg);
    job.source("lines", LogSource::<String>::msgpack(log))
        .sink("out", CollectSink::new());
    let handle = job.build().expect("build").start().await.expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while handle.metrics().checkpoints_completed < 10 && std::time::Instant::now() < deadline {
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
    let m = handle.metrics();
    assert!(m.checkpoints_completed >= 10, "{}", m.checkpoints_completed);
    assert_eq!(m.checkpoints.len(), 3, "only the newest 3 are kept");
    let ids: Vec<_> = m.checkpoints.iter().map(|c| c.id.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    handle.stop();
    let report = handle.wait().await.expect("stop");
    assert_eq!(report.events.len(), 5, "only the newest 5 events are kept");
    assert!(report.events_total > 20, "{}", report.events_total);
    assert!(matches!(
        report.events.last(),
        Some(JobEvent::JobFinished { .. })
    ));
    assert!(report.metrics.checkpoints_completed >= report.checkpoints_completed);

    let mut cfg = config(Threads::Current);
    cfg.event_window = 0;
    let job = common::memory_job("no-window", cfg);
    job.source("lines", LogSource::<String>::msgpack(words_log(&["a"], 1)))
        .sink("out", CollectSink::new());
    let e = job.build().expect_err("an empty window");
    assert!(e.to_string().contains("event_window"), "{e}");
}
