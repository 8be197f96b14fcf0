//! One word count, several processes (issue 15, section 4): a driver starts a Kafka broker
//! (librdkafka's mock cluster, in this process; `--bootstrap HOST:PORT` for a real one), feeds
//! a corpus into topic `lines`, and starts worker processes (this program with `--worker`),
//! each running its share of the job (`--process i --of n`: its partitions of `lines` and of
//! the repartition topic `words`, so its key groups), checkpointing on its own to an object
//! store (a local directory as one; `--s3 ENDPOINT` for S3, with `--features s3`). Words move
//! to the process owning their key through `words`, written by the exactly-once Kafka sink;
//! the counts go to `counts` the same way. The driver SIGKILLs a random worker now and then
//! and starts it again (it restores from its own latest checkpoint; the others keep running),
//! waits until every count update is in `counts`, stops the workers and checks the output:
//! `exactly-once: OK records=... kills=...`.
//!
//! Run: `cargo run --release --features kafka,object-store --example cluster_wordcount --
//! [--workers 3] [--kills 4] [--lines 30000] [--rate 4000] [--seed S] [--bootstrap B] [--s3 E]`
//! (`--rate 0` feeds the corpus first and measures throughput: `words_per_s`). The mock broker
//! keeps a bounded number of segments per partition (about 60,000 of these records): corpora
//! much above 40,000 lines need a real broker.

#[cfg(feature = "s3")]
#[path = "common/s3.rs"]
mod s3;

#[path = "common/cluster.rs"]
mod cluster;

use std::process::Command;
use std::time::Duration;

fn flag(args: &[String], name: &str) -> Option<String> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

fn number(args: &[String], name: &str, default: u64) -> u64 {
    flag(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> snapflow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--worker") {
        return cluster::worker(&args);
    }
    let dir = tempfile::tempdir().map_err(|e| snapflow::Error::Config(e.to_string()))?;
    let options = cluster::Options {
        workers: number(&args, "--workers", 3) as u32,
        kills: number(&args, "--kills", 4) as u32,
        seed: number(&args, "--seed", 7),
        lines: number(&args, "--lines", 30_000),
        rate: number(&args, "--rate", 4_000),
        bootstrap: flag(&args, "--bootstrap"),
        s3: flag(&args, "--s3"),
        dir: dir.path().to_path_buf(),
        timeout: Duration::from_secs(number(&args, "--timeout", 300)),
    };
    let exe = std::env::current_exe().map_err(|e| snapflow::Error::Config(e.to_string()))?;
    let spawn = move |a: &[String]| {
        let mut c = Command::new(&exe);
        c.arg("--worker").args(a);
        c
    };
    let out = match cluster::drive(&options, &spawn) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("worker logs kept in {}", dir.keep().display());
            return Err(e);
        }
    };
    println!(
        "cluster-wordcount workers={} words={} seconds={:.2} words_per_s={:.0} records={} repeats={}",
        options.workers,
        out.words,
        out.seconds,
        out.words as f64 / out.seconds,
        out.records,
        out.repeats
    );
    if out.lost == 0 && out.duplicated == 0 {
        println!("exactly-once: OK records={} kills={}", out.words, out.kills);
        Ok(())
    } else {
        println!(
            "exactly-once: FAILED lost={} duplicated={} kills={} (worker logs kept in {})",
            out.lost,
            out.duplicated,
            out.kills,
            dir.keep().display()
        );
        std::process::exit(1);
    }
}
