//! Word count under fire: a seeded chaos monkey kills an actor every 120-180 ms (every kind of
//! kill, any task: sources, operators, sinks, and the checkpoint coordinator) while the job
//! checkpoints every 100 ms. At the end the committed output is checked: every word must show
//! its running counts 1..=n exactly once.
//!
//! Run: `cargo run --release --example chaos_wordcount [-- --seed S] [-- --words N]`

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use snapflow::chaos::{quiet_chaos_panics, ChaosMonkey};
use snapflow::checkpoint::{CheckpointTiming, LocalCheckpointStorage};
use snapflow::prelude::*;

fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    quiet_chaos_panics();
    let args: Vec<String> = std::env::args().collect();
    let seed = arg(&args, "--seed").unwrap_or(2026);
    let target_words = arg(&args, "--words").unwrap_or(1_000_000);
    let root = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("snapflow-examples")
        .join("chaos_wordcount");
    let _ = std::fs::remove_dir_all(&root);
    let (expected, words) = common::write_corpus(&root.join("log"), seed, target_words)?;
    println!(
        "corpus: {words} words, {} distinct; chaos seed {seed}",
        expected.len()
    );

    let log: Arc<dyn ReplayableLog> =
        Arc::new(FileLog::open(root.join("log"), common::corpus_options())?);
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(100))
            .with_timeout(Duration::from_secs(10)),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: u32::MAX,
        },
        coordinator_restart: RestartStrategy::FixedDelay {
            delay: Duration::ZERO,
            max_attempts: u32::MAX,
        },
        ..JobConfig::default()
    };
    let out = root.join("out");
    let job = JobBuilder::with_config("chaos-wordcount", config);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(
        root.join("checkpoints"),
        "chaos-wordcount",
    )?));
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(120), Duration::from_millis(180)),
    );
    common::wordcount(&job, log, &out);
    let report = job.build()?.run()?;

    let (records, lost, duplicated) = common::check(&out, &expected)?;
    let mut recoveries = report.metrics.recoveries.clone();
    recoveries.sort();
    println!(
        "job: {:.2?}, {} checkpoints completed, {} aborted, recovery (failure to first record processed after restore) median {:?} max {:?}",
        report.elapsed,
        report.checkpoints_completed,
        report.metrics.checkpoints_aborted,
        recoveries.get(recoveries.len() / 2).copied().unwrap_or_default(),
        recoveries.last().copied().unwrap_or_default(),
    );
    let ok = lost == 0 && duplicated == 0 && records == words && report.kills >= 20;
    if report.kills < 20 {
        println!("the run needs at least 20 kills; it had {}", report.kills);
    }
    println!(
        "exactly-once: {} records={records} lost={lost} duplicated={duplicated} kills={} restarts={}",
        if ok { "OK" } else { "FAILED" },
        report.kills,
        report.restarts
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
