//! The whole life cycle of a job under load (issue 18, defect 8): start, chaos kills and
//! region restarts, checkpoints, stops and cancels at random moments, each followed at once by
//! a new job on the same checkpoint storage and output folder, and finally a run to the end.
//! The committed output must be exact and no step may hang. A thread burning CPU runs beside
//! every test, since the defects showed up only with the other core busy.
//!
//! Each seed decides the sequence (how many runs, when each is stopped or cancelled, how slow
//! manifest commits are, the chaos schedule); a failure names its seed. `SNAPFLOW_LIFECYCLE_SEEDS` sets how many seeds run
//! (default 50).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{check_updates, counting_log, keyed_job, splitmix, Events, LatchedStorage, Stage};
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::{CheckpointStorage, CheckpointTiming};
use snapflow::prelude::*;
use snapflow::JobEnd;

/// Burns one core until dropped.
struct Burner(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Burner {
    fn start() -> Burner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            let mut x = 0u64;
            while !flag.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        Burner(stop, Some(t))
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

fn config() -> JobConfig {
    JobConfig {
        parallelism: 2,
        batch_size: 32,
        threads: Threads::Arbiters(2),
        checkpoints: CheckpointTiming::every(Duration::from_millis(10))
            .with_timeout(Duration::from_secs(5)),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: 10_000,
        },
        coordinator_restart: RestartStrategy::FixedDelay {
            delay: Duration::ZERO,
            max_attempts: u32::MAX,
        },
        ..JobConfig::default()
    }
}

async fn wait_bounded(handle: &JobHandle, seed: u64, what: &str) -> Result<JobReport> {
    match tokio::time::timeout(Duration::from_secs(60), handle.wait()).await {
        Ok(r) => r,
        Err(_) => panic!("seed {seed}: {what} did not end within 60 s (a hang)"),
    }
}

/// One seed's life cycle; panics naming the seed on any failure.
async fn life_cycle(seed: u64) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (4_000, 16);
    let log = counting_log(n, keys, 2);
    // Slow manifest commits (up to 120 ms) widen the windows in which a cancel or a stop can
    // land during a manifest write.
    let slow = LatchedStorage::new(Arc::new(
        LocalCheckpointStorage::new(dir.path().join("checkpoints"), "life").expect("storage"),
    ));
    slow.commit_delay_ms
        .store(splitmix(&mut rng) % 121, Ordering::Relaxed);
    let storage: Arc<dyn CheckpointStorage> = Arc::new(slow);
    let interrupted = 1 + splitmix(&mut rng) % 8;
    for run in 0..=interrupted {
        let job = keyed_job(
            "life",
            config(),
            Arc::clone(&storage),
            Arc::clone(&log),
            &out,
            Stage::new(50),
        );
        job.chaos(
            ChaosMonkey::new(splitmix(&mut rng))
                .random_interval(Duration::from_millis(15), Duration::from_millis(60))
                .kills(vec![
                    Kill::PanicInUserCode,
                    Kill::StopFromOutside,
                    Kill::Coordinator,
                ]),
        );
        let handle = job
            .build()
            .expect("build")
            .start()
            .await
            .unwrap_or_else(|e| panic!("seed {seed} run {run}: start: {e}"));
        if run == interrupted {
            let report = wait_bounded(&handle, seed, "the last run")
                .await
                .unwrap_or_else(|e| panic!("seed {seed} run {run}: {e}"));
            assert_eq!(report.end, JobEnd::InputEnded, "seed {seed}");
            break;
        }
        let at = Duration::from_millis(5 + splitmix(&mut rng) % 246);
        let cancel = splitmix(&mut rng) % 2 == 0;
        actix::clock::sleep(at).await;
        if cancel {
            handle.cancel();
        } else {
            handle.stop();
        }
        let what = if cancel { "a cancel" } else { "a stop" };
        let report = wait_bounded(&handle, seed, what)
            .await
            .unwrap_or_else(|e| panic!("seed {seed} run {run} ({what} at {at:?}): {e}"));
        // A stop or cancel may come after the input ended and the job finished by itself.
        let expected = if cancel {
            JobEnd::Cancelled
        } else {
            JobEnd::Stopped
        };
        assert!(
            report.end == expected || report.end == JobEnd::InputEnded,
            "seed {seed} run {run}: {what} ended as {:?}",
            report.end
        );
    }
    let (records, lost, duplicated) = check_updates(&out, n, keys);
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "seed {seed}: {records} committed records, {lost} lost, {duplicated} duplicated \
         ({interrupted} interrupted runs)"
    );
}

/// `SNAPFLOW_LIFECYCLE_SEED=N` runs one seed.
#[actix_rt::test]
async fn start_restart_checkpoint_stop_cancel_resume_stays_exact_under_load() {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    let seeds = match var("SNAPFLOW_LIFECYCLE_SEED") {
        Some(s) => s..s + 1,
        None => 0..var("SNAPFLOW_LIFECYCLE_SEEDS").unwrap_or(50),
    };
    if std::env::var_os("SNAPFLOW_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("SNAPFLOW_LOG"))
            .try_init();
    }
    snapflow::chaos::quiet_chaos_panics();
    let _burner = Burner::start();
    for seed in seeds {
        life_cycle(seed).await;
    }
}

/// Fails in `open` on the first attempt of task 0, so its region restarts at once.
fn failing_first_open() -> common::PassThrough {
    let failed = Arc::new(AtomicBool::new(false));
    common::PassThrough {
        on_open: Arc::new(move |index| {
            if index == 0 && !failed.swap(true, Ordering::SeqCst) {
                Err(Error::Internal("injected failure in open".into()))
            } else {
                Ok(())
            }
        }),
    }
}

/// A stop requested early, about 10 ms after the start, while a failover region is restarting
/// and before any checkpoint has completed, used to hang. It must end, and a resumed run must
/// give exact output.
#[actix_rt::test]
async fn a_stop_early_while_a_region_restarts_ends_and_resumes_exactly() {
    snapflow::chaos::quiet_chaos_panics();
    let _burner = Burner::start();
    for seed in 0..10u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let (n, keys) = (3_000, 8);
        let log = counting_log(n, keys, 2);
        let storage: Arc<dyn CheckpointStorage> = Arc::new(
            LocalCheckpointStorage::new(dir.path().join("checkpoints"), "early").expect("storage"),
        );
        let build = |first: bool| {
            let mut config = config();
            config.restart = RestartStrategy::FixedDelay {
                delay: Duration::from_millis(20 + seed * 5),
                max_attempts: 100,
            };
            let pass = if first {
                failing_first_open()
            } else {
                common::PassThrough {
                    on_open: Arc::new(|_| Ok(())),
                }
            };
            keyed_job(
                "early",
                config,
                Arc::clone(&storage),
                Arc::clone(&log),
                &out,
                pass,
            )
        };
        let job = build(true);
        let (tap, mut events) = Events::tap();
        job.events(tap);
        let handle = job.build().expect("build").start().await.expect("start");
        if seed % 2 == 0 {
            // At the moment the region goes down.
            events
                .until("the region restart", |e| {
                    matches!(e, JobEvent::Restarting { .. })
                })
                .await;
        } else {
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        handle.stop();
        let report = wait_bounded(&handle, seed, "the early stop")
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: early stop: {e}"));
        assert!(
            matches!(report.end, JobEnd::Stopped | JobEnd::InputEnded),
            "seed {seed}: {:?}",
            report.end
        );
        let job = build(false);
        let handle = job.build().expect("build").start().await.expect("start");
        let report = wait_bounded(&handle, seed, "the resumed run")
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: resumed run: {e}"));
        assert_eq!(report.end, JobEnd::InputEnded, "seed {seed}");
        let (records, lost, duplicated) = check_updates(&out, n, keys);
        assert_eq!(
            (lost, duplicated),
            (0, 0),
            "seed {seed}: {records} committed, {lost} lost, {duplicated} duplicated"
        );
    }
}
