//! One job as three worker processes on Kafka (issue 15, section 4): the cluster word count
//! of `examples/cluster_wordcount.rs`, its workers this test binary started again as
//! processes (through `cluster_worker_entry_point`), SIGKILLed at seeded moments and started
//! again while the others keep running; the committed output is every count update exactly
//! once (`SNAPFLOW_CLUSTER_SEED` picks another seed).

#[cfg(feature = "s3")]
#[path = "../examples/common/s3.rs"]
mod s3;

#[path = "../examples/common/cluster.rs"]
mod cluster;

use std::process::Command;
use std::time::Duration;

/// The arguments of a worker, separated by the unit separator, for the re-started binary.
const WORKER: &str = "SNAPFLOW_CLUSTER_WORKER_ARGS";

/// Not a test on its own: when this binary is started as a worker, runs the worker and exits.
#[test]
fn cluster_worker_entry_point() {
    if let Ok(args) = std::env::var(WORKER) {
        let args: Vec<String> = args.split('\u{1f}').map(String::from).collect();
        match cluster::worker(&args) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("worker failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[test]
fn the_cluster_wordcount_with_sigkilled_workers_is_exactly_once() {
    let seed = std::env::var("SNAPFLOW_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let dir = tempfile::tempdir().expect("tempdir");
    let options = cluster::Options {
        workers: 3,
        kills: 4,
        seed,
        lines: 12_000,
        rate: 2_500,
        bootstrap: None,
        s3: None,
        dir: dir.path().to_path_buf(),
        timeout: Duration::from_secs(240),
    };
    let exe = std::env::current_exe().expect("test binary");
    let spawn = move |a: &[String]| {
        let mut c = Command::new(&exe);
        c.args(["cluster_worker_entry_point", "--exact", "--nocapture"])
            .env(WORKER, a.join("\u{1f}"));
        c
    };
    let out = cluster::drive(&options, &spawn)
        .unwrap_or_else(|e| panic!("seed {seed}: {e} (worker logs in {})", dir.keep().display()));
    assert_eq!(
        (out.lost, out.duplicated),
        (0, 0),
        "seed {seed}: (lost, duplicated) count updates of {}; {out:?}",
        out.words
    );
    assert!(out.kills >= 3, "seed {seed}: only {} kills", out.kills);
    eprintln!("seed {seed}: {out:?}");
}
