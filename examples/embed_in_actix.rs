//! snapflow inside an ordinary actix application: the application's own actor sends click
//! events to the job through a typed ingress (no encoding, no partitions, no writer to place),
//! a job counts clicks per user with a checkpoint every 100 ms, and the application's dashboard
//! actor receives the counts through an `ActorSink`, an epoch at a time, only once each
//! checkpoint is complete, and each count exactly once: it keeps no set of what it has seen,
//! and checks that no update arrives twice and none is missing.
//!
//! Run: `cargo run --release --example embed_in_actix`

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::{ActorSink, Ingest, SinkOutput};

const USERS: u64 = 97;

/// The application's producer: sends `n` clicks `(user, page)` to the job's ingress.
struct ClickSource {
    clicks: Recipient<Ingest<(u64, u64)>>,
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
        let clicks = self.clicks.clone();
        let first = self.next;
        self.next += msg.0;
        Box::pin(async move {
            let all: Vec<u64> = (first..first + msg.0).collect();
            // 100 clicks in flight at a time: they share the log's group commits.
            for chunk in all.chunks(100) {
                let sends = chunk.iter().map(|&i| {
                    let user = i % USERS;
                    // The reply comes once the click is durable in the job's log.
                    clicks.send(Ingest::keyed(&user, (user, i % 13)))
                });
                for sent in futures::future::join_all(sends).await {
                    sent.map_err(gone("ingress"))??;
                }
                // Trickle the clicks in, so the job sees them arrive over several checkpoints.
                actix::clock::sleep(Duration::from_millis(2)).await;
            }
            Ok(msg.0)
        })
    }
}

/// The application's consumer: keeps the latest count per user, and counts updates that
/// repeat or skip one (neither may happen).
#[derive(Default)]
struct Dashboard {
    counts: HashMap<u64, u64>,
    updates: u64,
    out_of_order: u64,
}

impl Actor for Dashboard {
    type Context = Context<Self>;
}

impl Handler<SinkOutput<(u64, u64)>> for Dashboard {
    type Result = ();

    fn handle(&mut self, out: SinkOutput<(u64, u64)>, _ctx: &mut Context<Self>) {
        let (user, count) = out.value;
        let c = self.counts.entry(user).or_insert(0);
        if count != *c + 1 {
            self.out_of_order += 1;
        }
        *c = count;
        self.updates += 1;
    }
}

#[derive(Message)]
#[rtype(result = "(HashMap<u64, u64>, u64, u64)")]
struct Snapshot;

impl Handler<Snapshot> for Dashboard {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.counts.clone(), self.updates, self.out_of_order))
    }
}

fn gone(actor: &'static str) -> impl Fn(MailboxError) -> Error {
    move |e| Error::ActorGone {
        actor,
        reason: e.to_string(),
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
    let dashboard = Dashboard::default().start();

    // The job, started inside this System. Its ingress log syncs every 5 ms (group commit).
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(100)),
        ..JobConfig::default()
    };
    let log_options = FileLogOptions {
        sync: SyncPolicy::Interval {
            every: Duration::from_millis(5),
            max_records: 10_000,
        },
        ..FileLogOptions::with_partitions(2)
    };
    let log: Arc<dyn ReplayableLog> = Arc::new(FileLog::open(root.join("clicks"), log_options)?);
    let job = JobBuilder::with_config("clicks", config);
    // A demo: checkpoints in memory (without this line they would go to ./snapflow/<job>/).
    job.checkpoint_in_memory();
    job.ingress::<(u64, u64)>("clicks", log)
        .map("one", |(user, _page): (u64, u64)| (user, 1u64))
        .key_by(|(user, _): &(u64, u64)| *user)
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("dashboard", ActorSink::new(dashboard.clone().recipient()));
    let handle = job.build()?.start().await?;

    let clicks = ClickSource {
        clicks: handle.ingress::<(u64, u64)>("clicks")?.recipient(),
        next: 0,
    }
    .start();
    let n = 20_000;
    let produced = clicks
        .send(Produce(n))
        .await
        .map_err(gone("ClickSource"))??;
    // Wait until the dashboard has every update, then stop the job gracefully.
    loop {
        let (_, updates, _) = dashboard.send(Snapshot).await.map_err(gone("Dashboard"))?;
        if updates >= n {
            break;
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    handle.stop();
    let report = handle.wait().await?;
    println!(
        "sent {produced} clicks through the typed ingress; the job took {} checkpoints in {:.2?}",
        report.checkpoints_completed, report.elapsed
    );
    let (counts, updates, out_of_order) =
        dashboard.send(Snapshot).await.map_err(gone("Dashboard"))?;
    let expected: HashMap<u64, u64> = (0..USERS).map(|u| (u, (n - u).div_ceil(USERS))).collect();
    println!(
        "the dashboard received {updates} updates for {} users, {out_of_order} repeated or skipped",
        counts.len()
    );
    System::current().stop();
    if counts == expected && updates == n && out_of_order == 0 {
        println!(
            "verified: every user's count equals the number of clicks sent, each update seen once"
        );
        Ok(())
    } else {
        let wrong = expected
            .iter()
            .filter(|(u, c)| counts.get(*u) != Some(c))
            .count();
        println!("FAILED: {wrong} users have a wrong count, {updates} updates for {n} clicks");
        std::process::exit(1);
    }
}
