//! snapflow inside an ordinary actix application: the application's own actor appends click
//! events through a `LogWriter`, a job counts clicks per user with a checkpoint every 100 ms,
//! and the application's dashboard actor receives the counts through an `ActorSink`, an epoch
//! at a time, only once each checkpoint is complete.
//!
//! Run: `cargo run --release --example embed_in_actix`

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use snapflow::checkpoint::CheckpointTiming;
use snapflow::log::{AppendBatch, LogWriter};
use snapflow::prelude::*;
use snapflow::{ActorSink, SinkOutput};

const USERS: u64 = 97;

/// The application's producer: appends `n` clicks `(user, page)` through the log writer.
struct ClickSource {
    writer: Addr<LogWriter>,
    next: u64,
}

impl Actor for ClickSource {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<u64>")]
struct Produce(u64);

impl Handler<Produce> for ClickSource {
    type Result = ResponseFuture<Result<u64>>;

    fn handle(&mut self, msg: Produce, _ctx: &mut Context<Self>) -> Self::Result {
        let writer = self.writer.clone();
        let first = self.next;
        self.next += msg.0;
        Box::pin(async move {
            let mut i = first;
            while i < first + msg.0 {
                let mut records = Vec::new();
                for _ in 0..100.min(first + msg.0 - i) {
                    records.push(snapflow::log::codec::encode(&(i % USERS, i % 13), "click")?);
                    i += 1;
                }
                let reply = writer
                    .send(AppendBatch {
                        partition: PartitionId(0),
                        records,
                    })
                    .await
                    .map_err(|e| Error::ActorGone {
                        actor: "LogWriter",
                        reason: e.to_string(),
                    })?;
                reply?;
                // Trickle the clicks in, so the job sees them arrive over several checkpoints.
                actix::clock::sleep(Duration::from_millis(2)).await;
            }
            Ok(i - first)
        })
    }
}

/// The application's consumer: keeps the latest count per user, drops redeliveries.
#[derive(Default)]
struct Dashboard {
    counts: HashMap<u64, u64>,
    seen: HashSet<(u64, u32, u64)>,
    epochs: HashSet<u64>,
    redelivered: u64,
}

impl Actor for Dashboard {
    type Context = Context<Self>;
}

impl Handler<SinkOutput<(u64, u64)>> for Dashboard {
    type Result = ();

    fn handle(&mut self, out: SinkOutput<(u64, u64)>, _ctx: &mut Context<Self>) {
        if !self.seen.insert((out.epoch.0, out.task, out.seq)) {
            self.redelivered += 1;
            return;
        }
        self.epochs.insert(out.epoch.0);
        let (user, count) = out.value;
        let c = self.counts.entry(user).or_insert(0);
        *c = (*c).max(count);
    }
}

#[derive(Message)]
#[rtype(result = "(HashMap<u64, u64>, usize, u64)")]
struct Snapshot;

impl Handler<Snapshot> for Dashboard {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.counts.clone(), self.epochs.len(), self.redelivered))
    }
}

#[actix::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let root = PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        .join("snapflow-examples")
        .join("embed_in_actix");
    let _ = std::fs::remove_dir_all(&root);

    // The application's log, and its writer on an arbiter of its own (it does blocking I/O).
    let log: Arc<dyn ReplayableLog> = Arc::new(FileLog::open(
        root.join("log"),
        FileLogOptions::with_partitions(1),
    )?);
    let writer_arbiter = Arbiter::new();
    let writer_log = Arc::clone(&log);
    let writer = LogWriter::start_in_arbiter(&writer_arbiter.handle(), move |_| {
        LogWriter::new(writer_log)
    });
    let clicks = ClickSource { writer, next: 0 }.start();
    let dashboard = Dashboard::default().start();

    // The job, started inside this System.
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(100)),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("clicks", config);
    job.source("clicks", LogSource::<(u64, u64)>::msgpack(Arc::clone(&log)))
        .parallelism(1)
        .map("one", |(user, _page): (u64, u64)| (user, 1u64))
        .key_by(|(user, _): &(u64, u64)| *user)
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("dashboard", ActorSink::new(dashboard.clone().recipient()));
    let handle = job.build()?.start().await?;

    let n = 20_000;
    let produced = clicks
        .send(Produce(n))
        .await
        .map_err(|e| Error::ActorGone {
            actor: "ClickSource",
            reason: e.to_string(),
        })??;
    // Let the job catch up with the log, then stop it gracefully: final checkpoint, commit.
    let end = log.end_offset(PartitionId(0))?;
    while handle
        .metrics()
        .tasks
        .iter()
        .filter(|t| t.task.vertex == "clicks")
        .map(|t| t.records_in)
        .sum::<u64>()
        < end.0
    {
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    handle.stop();
    let report = handle.wait().await?;
    println!(
        "appended {produced} clicks through the LogWriter; the job took {} checkpoints in {:.2?}",
        report.checkpoints_completed, report.elapsed
    );

    let (counts, epochs, redelivered) =
        dashboard
            .send(Snapshot)
            .await
            .map_err(|e| Error::ActorGone {
                actor: "Dashboard",
                reason: e.to_string(),
            })?;
    let expected: HashMap<u64, u64> = (0..USERS).map(|u| (u, (n - u).div_ceil(USERS))).collect();
    println!(
        "the dashboard received counts of {} users over {epochs} committed epochs ({redelivered} redeliveries dropped)",
        counts.len()
    );
    System::current().stop();
    if counts == expected {
        println!("verified: every user's count equals the number of clicks appended");
        Ok(())
    } else {
        let wrong = expected
            .iter()
            .filter(|(u, c)| counts.get(*u) != Some(c))
            .count();
        println!("FAILED: {wrong} users have a wrong count");
        std::process::exit(1);
    }
}
