//! The live web view of a word count under fire: lines keep arriving in the log, a seeded chaos
//! monkey kills an actor every few seconds, and the job checkpoints every 500 ms. Open the URL
//! it prints to watch the job graph, the checkpoint history, the failures and restarts, and the
//! tasks; Prometheus can scrape `/metrics` on the same port.
//!
//! Stops on Ctrl-C (or after `--seconds S`) with a final checkpoint, then checks the committed
//! output: every word's running counts must be 1..=n, each exactly once.
//!
//! Run: `cargo run --release --features web --example web_view [-- --port 8081] [-- --seconds S]
//! [-- --kill-every-ms 3000] [-- --seed S]`

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use snapflow::chaos::{quiet_chaos_panics, ChaosMonkey};
use snapflow::checkpoint::{CheckpointTiming, LocalCheckpointStorage};
use snapflow::prelude::*;
use snapflow::web::Serve;
use snapflow::{FileSink, MemoryLog};

/// Appends 50 lines of words every 100 ms until `stop`.
fn feed(log: Arc<MemoryLog>, seed: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let typed = TypedLog::<String>::new(log as Arc<dyn ReplayableLog>);
        let mut rng = seed;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut round = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let lines: Vec<String> = (0..50)
                .map(|_| {
                    let n = 3 + next() % 8;
                    (0..n)
                        .map(|_| format!("w{}", next() % 500))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            if typed.append_batch(PartitionId(round % 2), &lines).is_err() {
                return;
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    quiet_chaos_panics();
    let args: Vec<String> = std::env::args().collect();
    let port = common::arg(&args, "--port").unwrap_or(8081);
    let seconds = common::arg(&args, "--seconds");
    let kill_every = Duration::from_millis(common::arg(&args, "--kill-every-ms").unwrap_or(3000));
    let seed = common::arg(&args, "--seed").unwrap_or(2026);
    let root = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("snapflow-examples")
    .join("web_view");
    let _ = std::fs::remove_dir_all(&root);
    let out = root.join("out");

    let log = Arc::new(MemoryLog::new(2));
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feeder = feed(Arc::clone(&log), seed, Arc::clone(&stop_feed));
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(500)),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(50),
            max_attempts: u32::MAX,
        },
        coordinator_restart: RestartStrategy::FixedDelay {
            delay: Duration::ZERO,
            max_attempts: u32::MAX,
        },
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("web-view-wordcount", config);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(
        root.join("checkpoints"),
        "web-view-wordcount",
    )?));
    job.chaos(ChaosMonkey::new(seed).random_interval(kill_every, kill_every * 3 / 2));
    common::count_words(job.source("lines", LogSource::<String>::msgpack(log)), &out);
    let built = job.build()?;

    let system = actix::System::new();
    let report = system.block_on(async move {
        let handle = built.start().await?;
        let server = handle.serve(("127.0.0.1", port as u16)).await?;
        println!("web view: {}", server.url());
        println!("metrics:  {}metrics", server.url());
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                println!("stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        println!("stopping: final checkpoint, then the exactly-once check");
        handle.stop();
        let report = handle.wait().await;
        server.stop().await;
        report
    })?;
    stop_feed.store(true, Ordering::Relaxed);
    let _ = feeder.join();

    // Whatever was read before the stop: each word's counts must be 1..=max, each once.
    let mut max: HashMap<String, u64> = HashMap::new();
    for line in FileSink::<(String, u64)>::read_committed(&out)? {
        if let Some((w, c)) = line.rsplit_once(' ') {
            let c: u64 = c.parse().unwrap_or(0);
            let m = max.entry(w.to_string()).or_insert(0);
            *m = (*m).max(c);
        }
    }
    let (records, lost, duplicated) = common::check(&out, &max)?;
    println!(
        "{} checkpoints, {} kills, {} restarts; records={records} lost={lost} duplicated={duplicated}",
        report.checkpoints_completed, report.kills, report.restarts
    );
    if lost == 0 && duplicated == 0 && records > 0 {
        println!("web_view: OK (exactly once)");
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "web_view: FAILED: {lost} lost, {duplicated} duplicated of {records}"
        )))
    }
}
