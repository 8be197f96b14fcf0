//! Records enriched by asking an actor of the application, with async calls, under chaos.
//!
//! A "profiles" actor of the application answers each lookup after a random 0-5 ms and fails
//! 1 % of the time. The job reads 100,000 purchases, asks the profiles actor for each buyer's
//! tier through `async_map` (unordered, 100 calls in flight per task, failed calls retried),
//! and writes `purchase user tier` lines with an exactly-once `FileSink`, while a chaos monkey
//! kills tasks at random. It checks that the committed output equals the expected enrichment
//! exactly (every purchase once, with the right tier), prints `exactly-once: OK ...` and exits
//! 0, or explains and exits 1.
//!
//! `-- --bench` measures throughput instead: calls with a fixed 1 ms simulated latency,
//! capacity 1,000 per task, parallelism 2, no chaos, against the ideal capacity / latency.
//!
//! Run: `cargo run --release --example async_enrich [-- --seed N] [-- --bench]`

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::LocalBoxFuture;
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::{AsyncFunction, AsyncMode, AsyncOptions};

const USERS: u64 = 1_000;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The tier the profiles actor knows for `user`.
fn tier(user: u64) -> u64 {
    (user * 7 + 3) % 5
}

/// The application's profiles service: slow and flaky.
struct Profiles {
    rng: u64,
}

impl Actor for Profiles {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<u64>")]
struct Lookup(u64);

impl Handler<Lookup> for Profiles {
    type Result = ResponseFuture<Result<u64>>;

    fn handle(&mut self, Lookup(user): Lookup, _: &mut Context<Self>) -> Self::Result {
        let delay = Duration::from_micros(splitmix(&mut self.rng) % 5_000);
        let fails = splitmix(&mut self.rng) % 100 == 0;
        Box::pin(async move {
            actix::clock::sleep(delay).await;
            if fails {
                return Err(Error::Unavailable {
                    what: "profiles".into(),
                    reason: "a flaky moment".into(),
                });
            }
            Ok(tier(user))
        })
    }
}

/// Asks the profiles actor for a purchase's buyer.
#[derive(Clone)]
struct Enrich {
    profiles: Addr<Profiles>,
}

impl AsyncFunction<(u64, u64), (u64, u64, u64)> for Enrich {
    fn call(
        &self,
        &(purchase, user): &(u64, u64),
    ) -> LocalBoxFuture<'static, Result<Vec<(u64, u64, u64)>>> {
        let ask = self.profiles.send(Lookup(user));
        Box::pin(async move {
            let tier = ask.await.map_err(|e| Error::ActorGone {
                actor: "Profiles",
                reason: e.to_string(),
            })??;
            Ok(vec![(purchase, user, tier)])
        })
    }
}

/// Waits a fixed latency, for the throughput figure.
#[derive(Clone)]
struct Latency(Duration);

impl AsyncFunction<(u64, u64), (u64, u64, u64)> for Latency {
    fn call(
        &self,
        &(purchase, user): &(u64, u64),
    ) -> LocalBoxFuture<'static, Result<Vec<(u64, u64, u64)>>> {
        let d = self.0;
        Box::pin(async move {
            tokio::time::sleep(d).await;
            Ok(vec![(purchase, user, tier(user))])
        })
    }
}

fn purchases(n: u64) -> Result<Arc<dyn ReplayableLog>> {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    let all: Vec<(u64, u64)> = (0..n).map(|i| (i, (i * 31) % USERS)).collect();
    for (p, part) in all.chunks(n.div_ceil(2) as usize).enumerate() {
        typed.append_batch(PartitionId(p as u32), part)?;
    }
    Ok(log)
}

fn config(checkpoint_every: Duration) -> JobConfig {
    JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(checkpoint_every),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: 1000,
        },
        ..JobConfig::default()
    }
}

fn sink(dir: &std::path::Path) -> FileSink<(u64, u64, u64)> {
    FileSink::new(dir, |(p, u, t): &(u64, u64, u64), l: &mut String| {
        l.push_str(&format!("{p} {u} {t}"))
    })
}

async fn chaos_run(seed: u64) -> Result<String> {
    const N: u64 = 100_000;
    let dir = std::env::temp_dir().join(format!("snapflow-async-enrich-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let profiles_arbiter = Arbiter::new();
    let profiles =
        Profiles::start_in_arbiter(&profiles_arbiter.handle(), move |_| Profiles { rng: seed });
    let job = JobBuilder::with_config("enrich", config(Duration::from_millis(50)));
    // A demo: checkpoints in memory (without this line they would go to ./snapflow/<job>/).
    job.checkpoint_in_memory();
    let options = AsyncOptions::new(AsyncMode::Unordered, 100)
        .timeout(Duration::from_secs(1))
        .retries(5, Duration::from_millis(1));
    job.source("purchases", LogSource::msgpack(purchases(N)?).bounded())
        .async_map("enrich", Enrich { profiles }, options)
        .sink("out", sink(&dir));
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(50), Duration::from_millis(150))
            .kills(vec![Kill::PanicInUserCode, Kill::StopFromOutside])
            .max_kills(10),
    );
    let report = job.build()?.start().await?.wait().await?;
    let lines = FileSink::<(u64, u64, u64)>::read_committed(&dir)?;
    let expected: HashSet<String> = (0..N)
        .map(|i| {
            let user = (i * 31) % USERS;
            format!("{i} {user} {}", tier(user))
        })
        .collect();
    let got: HashSet<&String> = lines.iter().collect();
    let missing = expected.iter().filter(|l| !got.contains(l)).count();
    let duplicated = lines.len() - got.len();
    let wrong = got.iter().filter(|l| !expected.contains(**l)).count();
    let _ = std::fs::remove_dir_all(&dir);
    profiles_arbiter.stop();
    if missing + duplicated + wrong > 0 {
        return Err(Error::Internal(format!(
            "{missing} missing, {duplicated} duplicated, {wrong} wrong of {N}"
        )));
    }
    Ok(format!(
        "exactly-once: OK seed {seed}: {N} purchases enriched once each by the profiles actor \
         (0-5 ms, 1 % failures retried); {} kills, {} restarts, {} checkpoints",
        report.kills, report.restarts, report.checkpoints_completed
    ))
}

async fn bench() -> Result<String> {
    const N: u64 = 2_000_000;
    const CAPACITY: usize = 1_000;
    let latency = Duration::from_millis(1);
    let dir = std::env::temp_dir().join(format!("snapflow-async-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let job = JobBuilder::with_config("enrich-bench", config(Duration::from_secs(1)));
    // A demo: checkpoints in memory (without this line they would go to ./snapflow/<job>/).
    job.checkpoint_in_memory();
    job.source("purchases", LogSource::msgpack(purchases(N)?).bounded())
        .async_map(
            "enrich",
            Latency(latency),
            AsyncOptions::new(AsyncMode::Unordered, CAPACITY),
        )
        .sink("out", sink(&dir));
    let started = Instant::now();
    let report = job.build()?.start().await?.wait().await?;
    let secs = started.elapsed().as_secs_f64();
    let lines = FileSink::<(u64, u64, u64)>::read_committed(&dir)?.len() as u64;
    let _ = std::fs::remove_dir_all(&dir);
    if lines != N {
        return Err(Error::Internal(format!(
            "{lines} results for {N} purchases"
        )));
    }
    let ideal = 2.0 * CAPACITY as f64 / latency.as_secs_f64();
    let rate = N as f64 / secs;
    Ok(format!(
        "async enrichment: {N} records, 1 ms latency, capacity {CAPACITY} per task, p = 2: \
         {rate:.0} records/s in {secs:.2} s = {:.0} % of the ideal {ideal:.0}/s; a slot of \
         the capacity turned over every {:.2} ms (capacity x tasks / rate: the 1 ms sleep, which \
         tokio's timer rounds up to its next millisecond tick, plus time a slot stood empty); \
         {} checkpoints",
        100.0 * rate / ideal,
        2.0 * CAPACITY as f64 / rate * 1e3,
        report.checkpoints_completed
    ))
}

fn main() {
    snapflow::chaos::quiet_chaos_panics();
    let args: Vec<String> = std::env::args().collect();
    let seed = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let system = actix::System::new();
    let outcome = if args.iter().any(|a| a == "--bench") {
        system.block_on(bench())
    } else {
        system.block_on(chaos_run(seed))
    };
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("async_enrich FAILED (seed {seed}): {e}");
            std::process::exit(1);
        }
    }
}
