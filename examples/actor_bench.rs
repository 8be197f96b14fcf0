//! Throughput of the actor faces of a job: queries and commands sent by 4 application actors
//! to a keyed actor operator at parallelism 2, next to a plain actix `Addr::send` round trip to
//! an actor on another arbiter, measured in the same run. Each application actor sends its
//! messages one after another (each waits for its reply), so per-message cost = elapsed /
//! messages per actor.
//!
//! Commands are measured with a command log in memory (no sync) and with a `FileLog` that
//! syncs every 1 ms (group commit: a command's append answers after the next sync).
//!
//! Run: `cargo run --release --example actor_bench [-- --messages N]`

#[path = "common/bank.rs"]
mod bank;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bank::{Bank, Deposit, Read};
use snapflow::prelude::*;

const CLIENTS: u64 = 4;

/// The plain actix baseline: answers a ping.
struct Echo;

impl Actor for Echo {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Ping(u64);

impl Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, Ping(x): Ping, _: &mut Context<Self>) -> u64 {
        x + 1
    }
}

/// An application actor that sends `n` messages of one kind, each after the last reply.
struct Client {
    bank: Option<OperatorRef<Bank>>,
    echo: Addr<Echo>,
    id: u64,
}

impl Actor for Client {
    type Context = Context<Self>;
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Query,
    Command,
}

#[derive(Message)]
#[rtype(result = "Result<()>")]
struct Go(Kind, u64);

impl Handler<Go> for Client {
    type Result = ResponseFuture<Result<()>>;

    fn handle(&mut self, Go(kind, n): Go, _: &mut Context<Self>) -> Self::Result {
        let (bank, echo, id) = (self.bank.clone(), self.echo.clone(), self.id);
        Box::pin(async move {
            for i in 0..n {
                let key = (id * 7919 + i) % 1024;
                match (kind, &bank) {
                    (Kind::Echo, _) => {
                        echo.send(Ping(i))
                            .await
                            .map_err(|e| Error::Internal(e.to_string()))?;
                    }
                    (Kind::Query, Some(b)) => {
                        b.query(key, Read).await?;
                    }
                    (Kind::Command, Some(b)) => {
                        b.command(key, Deposit(1)).await?;
                    }
                    _ => return Err(Error::Config("no bank".into())),
                }
            }
            Ok(())
        })
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `n` messages of `kind` from each client at once; returns (messages/s, µs per message).
async fn measure(clients: &[Addr<Client>], kind: Kind, n: u64) -> Result<(f64, f64)> {
    let start = Instant::now();
    let runs: Vec<_> = clients.iter().map(|c| c.send(Go(kind, n))).collect();
    for r in futures::future::join_all(runs).await {
        r.map_err(|e| Error::Internal(e.to_string()))??;
    }
    let s = start.elapsed().as_secs_f64();
    Ok(((CLIENTS * n) as f64 / s, s * 1e6 / n as f64))
}

async fn bank_job(name: &str, commands: Arc<dyn ReplayableLog>) -> Result<JobHandle> {
    let config = JobConfig {
        parallelism: 2,
        threads: Threads::Arbiters(2),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config(name, config);
    // A demo: checkpoints in memory (without this line they would go to ./snapflow/<job>/).
    job.checkpoint_in_memory();
    let none: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    job.source("deposits", LogSource::msgpack(none))
        .key_by(|d: &(u64, u64)| d.0)
        .actor("bank", Bank::default(), commands)
        .sink("out", CollectSink::new());
    job.build()?.start().await
}

async fn run(n: u64) -> Result<()> {
    let echo_arbiter = Arbiter::new();
    let echo = Echo::start_in_arbiter(&echo_arbiter.handle(), |_| Echo);
    let memory = bank_job("bench-memory", Arc::new(MemoryLog::new(2))).await?;
    let dir = std::env::temp_dir().join(format!("snapflow-actor-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = FileLogOptions {
        sync: SyncPolicy::Interval {
            every: Duration::from_millis(1),
            max_records: 10_000,
        },
        ..FileLogOptions::with_partitions(2)
    };
    let file = bank_job("bench-file", Arc::new(FileLog::open(&dir, opts)?)).await?;
    let clients = |h: &JobHandle| -> Result<Vec<Addr<Client>>> {
        let bank = h.operator::<Bank>("bank")?;
        Ok((0..CLIENTS)
            .map(|id| {
                Client {
                    bank: Some(bank.clone()),
                    echo: echo.clone(),
                    id,
                }
                .start()
            })
            .collect())
    };
    let (on_memory, on_file) = (clients(&memory)?, clients(&file)?);
    // Warm up, then measure.
    measure(&on_memory, Kind::Query, n / 10).await?;
    let rows = [
        (
            "actix Addr::send round trip",
            measure(&on_memory, Kind::Echo, n).await?,
        ),
        (
            "query (live state)",
            measure(&on_memory, Kind::Query, n).await?,
        ),
        (
            "command, log in memory",
            measure(&on_memory, Kind::Command, n).await?,
        ),
        (
            "command, FileLog group commit 1 ms",
            measure(&on_file, Kind::Command, n / 10).await?,
        ),
    ];
    println!(
        "{CLIENTS} application actors, each sending one message after the other; bank at p = 2"
    );
    for (what, (rate, us)) in rows {
        println!("{what:<38} {rate:>12.0} msgs/s  {us:>8.1} us per message per actor");
    }
    memory.stop();
    file.stop();
    memory.wait().await?;
    file.wait().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() {
    let n = arg("--messages", 20_000);
    let system = actix::System::new();
    if let Err(e) = system.block_on(run(n)) {
        eprintln!("actor_bench failed: {e}");
        std::process::exit(1);
    }
}
