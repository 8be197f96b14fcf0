//! Whole-process crashes: the word-count job runs in a child process, which this program
//! SIGKILLs at random moments (at least 10 times) and starts again on the same directories,
//! until the job finishes. Each new process resumes from the latest complete checkpoint. Then
//! the committed file-sink output is checked: every word's running counts 1..=n exactly once.
//!
//! Run: `cargo run --release --example chaos_process [-- --seed S]`

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapflow::checkpoint::{CheckpointTiming, LocalCheckpointStorage};
use snapflow::prelude::*;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The child: runs the job to its end, resuming from the latest checkpoint in `root`.
fn child(root: &Path) -> Result<()> {
    let log: Arc<dyn ReplayableLog> =
        Arc::new(FileLog::open(root.join("log"), common::corpus_options())?);
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(100))
            .with_timeout(Duration::from_secs(10)),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("chaos-process", config);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(
        root.join("checkpoints"),
        "chaos-process",
    )?));
    common::wordcount(&job, log, &root.join("out"));
    let report = job.build()?.run()?;
    println!("child: finished, restored from {:?}", report.restored_from);
    Ok(())
}

fn spawn(root: &Path) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| Error::Config(format!("no current exe: {e}")))?;
    Command::new(exe)
        .arg("--child")
        .arg(root)
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start the child process: {e}")))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let root = PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| Error::Config("--child needs a directory".into()))?,
        );
        return child(&root);
    }
    let seed: u64 = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(77);
    let root = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("snapflow-examples")
        .join("chaos_process");
    let _ = std::fs::remove_dir_all(&root);
    let (expected, words) = common::write_corpus(&root.join("log"), seed, 1_000_000)?;
    println!("corpus: {words} words; killing the job's process at random moments (seed {seed})");

    let started = Instant::now();
    let (mut rng, mut kills, mut launches) = (seed, 0u32, 0u32);
    loop {
        let mut process = spawn(&root)?;
        launches += 1;
        let deadline = Instant::now() + Duration::from_millis(200 + splitmix(&mut rng) % 400);
        let status = loop {
            if let Some(status) = process
                .try_wait()
                .map_err(|e| Error::Config(format!("wait: {e}")))?
            {
                break Some(status);
            }
            if kills < 10 && Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match status {
            None => {
                process
                    .kill()
                    .map_err(|e| Error::Config(format!("kill: {e}")))?; // SIGKILL
                let _ = process.wait();
                kills += 1;
                println!("SIGKILL {kills} after launch {launches}");
            }
            Some(s) if s.success() => break,
            Some(s) => {
                println!("exactly-once: FAILED the child process failed ({s})");
                std::process::exit(1);
            }
        }
    }
    let (records, lost, duplicated) = common::check(&root.join("out"), &expected)?;
    let ok = lost == 0 && duplicated == 0 && records == words && kills >= 10;
    println!("{launches} launches in {:.2?}", started.elapsed());
    println!(
        "exactly-once: {} records={records} lost={lost} duplicated={duplicated} kills={kills} restarts={}",
        if ok { "OK" } else { "FAILED" },
        launches - 1
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
