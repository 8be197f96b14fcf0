//! Per-user click windows by event time: a deterministic click stream whose events arrive up to
//! 2 seconds out of order goes into per-user tumbling windows of one minute and session windows
//! with a 30-second gap. The committed results are checked against a batch computation.
//!
//! Run: `cargo run --release --example windowed_clicks`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapflow::checkpoint::{CheckpointTiming, LocalCheckpointStorage};
use snapflow::prelude::*;
use snapflow::state::Aggregator;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Click {
    user: u32,
    page: u32,
    /// Event time, ms.
    at: i64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counts clicks.
#[derive(Clone)]
struct Count;

impl Aggregator for Count {
    type In = Click;
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _c: Click) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

impl WindowAggregator for Count {
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
}

type Windows = BTreeMap<(u32, i64, i64), u64>;

const MINUTE: i64 = 60_000;
const GAP: i64 = 30_000;
const DISORDER: i64 = 2_000;

fn batch_tumbling(clicks: &[Click]) -> Windows {
    let mut out = Windows::new();
    for c in clicks {
        let start = c.at - c.at.rem_euclid(MINUTE);
        *out.entry((c.user, start, start + MINUTE)).or_insert(0) += 1;
    }
    out
}

fn batch_sessions(clicks: &[Click]) -> Windows {
    let mut by_user: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for c in clicks {
        by_user.entry(c.user).or_default().push(c.at);
    }
    let mut out = Windows::new();
    for (user, mut times) in by_user {
        times.sort_unstable();
        let (mut start, mut end, mut n) = (times[0], times[0] + GAP, 0u64);
        for t in times {
            if t > end {
                out.insert((user, start, end), n);
                start = t;
                n = 0;
            }
            end = end.max(t + GAP);
            n += 1;
        }
        out.insert((user, start, end), n);
    }
    out
}

fn read(out: &Path) -> Result<Windows> {
    let mut w = Windows::new();
    for line in snapflow::FileSink::<()>::read_committed(out)? {
        let f: Vec<i64> = line.split(' ').filter_map(|x| x.parse().ok()).collect();
        if f.len() == 4 {
            w.insert((f[0] as u32, f[1], f[2]), f[3] as u64);
        }
    }
    Ok(w)
}

fn main() -> Result<()> {
    let root = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("snapflow-examples")
        .join("windowed_clicks");
    let _ = std::fs::remove_dir_all(&root);

    // Two partitions of clicks over about two hours, each up to 2 s out of order.
    let log: Arc<dyn ReplayableLog> = Arc::new(FileLog::open(
        root.join("log"),
        FileLogOptions {
            partitions: 2,
            sync: SyncPolicy::Os,
            ..FileLogOptions::default()
        },
    )?);
    let typed = TypedLog::<Click>::new(Arc::clone(&log));
    let mut all = Vec::new();
    let mut rng = 7u64;
    for p in 0..2u32 {
        let mut t = 0i64;
        let mut batch = Vec::new();
        for _ in 0..200_000 {
            t += (splitmix(&mut rng) % 70) as i64;
            let at = (t - (splitmix(&mut rng) % DISORDER as u64) as i64).max(0);
            // A few users click in bursts, so that sessions form and end.
            let user = (splitmix(&mut rng) % 50) as u32;
            if (at / 200_000 + i64::from(user)) % 3 == 0 {
                continue;
            }
            let c = Click {
                user,
                page: (splitmix(&mut rng) % 20) as u32,
                at,
            };
            batch.push(c.clone());
            all.push(c);
        }
        typed.append_batch(PartitionId(p), &batch)?;
    }
    log.sync()?;
    println!(
        "{} clicks of 50 users over {:.1} hours of event time",
        all.len(),
        all.iter().map(|c| c.at).max().unwrap_or(0) as f64 / 3.6e6
    );

    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(100)),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("clicks", config);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(
        root.join("checkpoints"),
        "clicks",
    )?));
    let clicks = job.source(
        "clicks",
        LogSource::<Click>::msgpack(Arc::clone(&log))
            .bounded()
            .event_time(
                |c: &Click| c.at,
                WatermarkStrategy::BoundedOutOfOrderness(DISORDER),
            ),
    );
    let format = |r: &WindowResult<u32, u64>, l: &mut String| {
        l.push_str(&format!(
            "{} {} {} {}",
            r.key, r.window.start, r.window.end, r.value
        ))
    };
    let (tumbling_out, session_out) = (root.join("per-minute"), root.join("sessions"));
    clicks
        .clone()
        .key_by(|c: &Click| c.user)
        .window(WindowAssigner::Tumbling { size: MINUTE }, |c: &Click| c.at)
        .aggregate("per-minute", Count)
        .sink(
            "per-minute-out",
            snapflow::FileSink::new(&tumbling_out, format),
        );
    clicks
        .key_by(|c: &Click| c.user)
        .window(WindowAssigner::Session { gap: GAP }, |c: &Click| c.at)
        .aggregate("sessions", Count)
        .sink(
            "sessions-out",
            snapflow::FileSink::new(&session_out, format),
        );
    let report = job.build()?.run()?;
    println!(
        "job: {:.2?}, {} checkpoints",
        report.elapsed, report.checkpoints_completed
    );

    let (tumbling, sessions) = (read(&tumbling_out)?, read(&session_out)?);
    for ((user, start, end), n) in sessions.iter().filter(|(k, _)| k.0 == 7).take(3) {
        println!(
            "user {user}: session [{:.1} min, {:.1} min) with {n} clicks",
            *start as f64 / 6e4,
            *end as f64 / 6e4
        );
    }
    for ((user, start, _), n) in tumbling.iter().filter(|(k, _)| k.0 == 7).take(3) {
        println!("user {user}: minute {} has {n} clicks", start / MINUTE);
    }
    let (want_t, want_s) = (batch_tumbling(&all), batch_sessions(&all));
    let late: u64 = report.metrics.tasks.iter().map(|t| t.late_records).sum();
    if tumbling == want_t && sessions == want_s && late == 0 {
        println!(
            "verified: all {} per-minute windows and {} sessions equal the batch computation",
            want_t.len(),
            want_s.len()
        );
        Ok(())
    } else {
        println!(
            "FAILED: per-minute {} of {} equal, sessions {} of {} equal, {late} late records",
            tumbling
                .iter()
                .filter(|(k, v)| want_t.get(k) == Some(v))
                .count(),
            want_t.len(),
            sessions
                .iter()
                .filter(|(k, v)| want_s.get(k) == Some(v))
                .count(),
            want_s.len()
        );
        std::process::exit(1);
    }
}
