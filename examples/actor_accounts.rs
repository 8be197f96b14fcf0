//! Bank accounts as a keyed actor operator, inside an actix application, under chaos.
//!
//! A job keeps one account per key. The application's deposit feeder actor sends deposits
//! through a typed ingress; four teller actors move money between accounts with commands
//! (`Withdraw` from one account, then, once that withdrawal is durable and succeeded, `Deposit`
//! to another) and read balances with queries, while a chaos monkey kills tasks and the job's
//! supervisor at random, and kills an auditor actor of the application that the job hosts as
//! its sink (its state joins the checkpoints). At the end the example checks, from what the
//! application itself sent: every command applied exactly once (each account's count of
//! applied commands equals what the tellers sent it), the total balance equal to the deposits
//! exactly, every query answered, and the auditor's final state counting every deposit once.
//! It prints `exactly-once: OK ...` and exits 0, or explains and exits 1.
//!
//! The deposits and commands logs are `FileLog`s with group commit (a sync every 5 ms): an
//! ingress send or a command append answers once its record is synced.
//!
//! Run: `cargo run --release --example actor_accounts [-- --seed N --transfers N --deposits N]`

#[path = "common/bank.rs"]
mod bank;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bank::{Account, Bank, Deposit, Read, Withdraw};
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::checkpoint::CheckpointTiming;
use snapflow::prelude::*;
use snapflow::sink::{ActorParticipant, CheckpointedActor, Deliver};

const ACCOUNTS: u64 = 64;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a teller did, counted on its own side.
#[derive(Debug, Default)]
struct Tally {
    commands: HashMap<u64, u64>,
    transfers: u64,
    refused: u64,
    queries: u64,
}

/// An application actor moving money between accounts.
struct Teller {
    bank: OperatorRef<Bank>,
    seed: u64,
}

impl Actor for Teller {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<Tally>")]
struct Work(u64);

impl Handler<Work> for Teller {
    type Result = ResponseFuture<Result<Tally>>;

    fn handle(&mut self, Work(transfers): Work, _: &mut Context<Self>) -> Self::Result {
        let (bank, mut rng) = (self.bank.clone(), self.seed);
        Box::pin(async move {
            let mut tally = Tally::default();
            for _ in 0..transfers {
                let from = splitmix(&mut rng) % ACCOUNTS;
                let to = (from + 1 + splitmix(&mut rng) % (ACCOUNTS - 1)) % ACCOUNTS;
                let amount = (splitmix(&mut rng) % 20 + 1) as i64;
                let _balance: Account = bank.query(from, Read).await?;
                tally.queries += 1;
                let withdrawn = bank.command(from, Withdraw(amount)).await?;
                *tally.commands.entry(from).or_default() += 1;
                // Only the durable reply is final: a restore may roll the first one back.
                if withdrawn.durable().await? {
                    bank.command(to, Deposit(amount)).await?;
                    *tally.commands.entry(to).or_default() += 1;
                    tally.transfers += 1;
                } else {
                    tally.refused += 1;
                }
            }
            Ok(tally)
        })
    }
}

/// An application actor hosted by the job: counts the balance changes it is given. Its state
/// joins the job's checkpoints, so it survives its own kills exactly.
#[derive(Default)]
struct Auditor {
    changes: u64,
}

impl Actor for Auditor {
    type Context = Context<Self>;
}

impl Handler<Deliver<(u64, i64)>> for Auditor {
    type Result = ();
    fn handle(&mut self, _change: Deliver<(u64, i64)>, _: &mut Context<Self>) {
        self.changes += 1;
    }
}

impl CheckpointedActor for Auditor {
    type State = u64;
    fn snapshot(&self) -> u64 {
        self.changes
    }
    fn restore(&mut self, changes: u64) {
        self.changes = changes;
    }
}

snapflow::checkpointed_actor!(Auditor);

/// The application actor feeding deposits into the job's ingress.
struct Feeder {
    ingress: Ingress<(u64, u64)>,
}

impl Actor for Feeder {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<u64>")]
struct Feed(u64);

impl Handler<Feed> for Feeder {
    type Result = ResponseFuture<Result<u64>>;

    fn handle(&mut self, Feed(n): Feed, _: &mut Context<Self>) -> Self::Result {
        let ingress = self.ingress.clone();
        Box::pin(async move {
            let mut total = 0;
            // 250 sends in flight at a time share each group commit.
            for chunk in (0..n).collect::<Vec<u64>>().chunks(250) {
                let sends = chunk.iter().map(|&i| {
                    let ingress = ingress.clone();
                    async move {
                        let deposit = (i % ACCOUNTS, i % 7 + 1);
                        ingress
                            .send_keyed(&deposit.0, &deposit)
                            .await
                            .map(|_| deposit.1)
                    }
                });
                total += futures::future::try_join_all(sends)
                    .await?
                    .iter()
                    .sum::<u64>();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(total)
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

fn mailbox(e: MailboxError) -> Error {
    Error::ActorGone {
        actor: "application actor",
        reason: e.to_string(),
    }
}

/// Reads every account once the job has seen all `deposits`.
async fn settle(bank: &OperatorRef<Bank>, deposits: u64) -> Result<Vec<Account>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut all = Vec::with_capacity(ACCOUNTS as usize);
        for key in 0..ACCOUNTS {
            all.push(bank.query(key, Read).await?);
        }
        let seen: u64 = all.iter().map(|a| a.deposits_seen).sum();
        if seen == deposits {
            return Ok(all);
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "only {seen} of {deposits} deposits were seen"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(seed: u64, transfers: u64, deposits: u64) -> Result<String> {
    let root = std::env::temp_dir().join(format!("snapflow-actor-accounts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_millis(20)),
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: 1000,
        },
        supervisor_restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(5),
            max_attempts: 1000,
        },
        coordinator_restart: RestartStrategy::FixedDelay {
            delay: Duration::ZERO,
            max_attempts: 1000,
        },
        query_timeout: Duration::from_secs(30),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("accounts", config);
    let auditor = ActorParticipant::new(Auditor::default);
    job.checkpoint_storage(Arc::new(LocalCheckpointStorage::new(&root, "accounts")?));
    // Group commit: appends answer after the next sync, at most 5 ms later.
    let log = |name: &str| -> Result<Arc<dyn ReplayableLog>> {
        let opts = FileLogOptions {
            sync: SyncPolicy::Interval {
                every: Duration::from_millis(5),
                max_records: 10_000,
            },
            ..FileLogOptions::with_partitions(2)
        };
        Ok(Arc::new(FileLog::open(root.join(name), opts)?))
    };
    job.ingress::<(u64, u64)>("deposits", log("deposits")?)
        .key_by(|d: &(u64, u64)| d.0)
        .actor("accounts", Bank::default(), log("commands")?)
        .sink("auditor", auditor.clone());
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(50), Duration::from_millis(150))
            .kills(vec![
                Kill::PanicInUserCode,
                Kill::StopFromOutside,
                Kill::JobSupervisor,
                Kill::ApplicationActor,
            ])
            .max_kills(40),
    );
    let handle = job.build()?.start().await?;
    let bank = handle.operator::<Bank>("accounts")?;
    let feeder = Feeder {
        ingress: handle.ingress("deposits")?,
    }
    .start();
    let fed = feeder.send(Feed(deposits));
    // Let some money arrive before the tellers start moving it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tellers: Vec<_> = (0..4)
        .map(|i| {
            Teller {
                bank: bank.clone(),
                seed: seed ^ (i + 1),
            }
            .start()
            .send(Work(transfers))
        })
        .collect();
    let deposited = fed.await.map_err(mailbox)??;
    let mut tallies = Vec::new();
    for t in tellers {
        tallies.push(t.await.map_err(mailbox)??);
    }
    let accounts = settle(&bank, deposits).await?;
    let mut checks = Vec::new();
    let total: i64 = accounts.iter().map(|a| a.balance).sum();
    if total != deposited as i64 {
        checks.push(format!(
            "total balance {total}, but {deposited} was deposited"
        ));
    }
    for (key, a) in accounts.iter().enumerate() {
        let sent: u64 = tallies
            .iter()
            .map(|t| t.commands.get(&(key as u64)).copied().unwrap_or(0))
            .sum();
        if a.commands != sent {
            checks.push(format!(
                "account {key} applied {} commands, {sent} were sent",
                a.commands
            ));
        }
    }
    handle.stop();
    let report = handle.wait().await?;
    let _ = std::fs::remove_dir_all(&root);
    // The auditor's state at the final checkpoint: every deposit seen once, across its kills.
    let mut audited = 0;
    for task in 0..2 {
        audited += auditor.last_snapshot(task)?.unwrap_or(0);
    }
    if audited != deposits {
        checks.push(format!(
            "the auditor saw {audited} deposits, {deposits} were sent"
        ));
    }
    let commands: u64 = tallies.iter().flat_map(|t| t.commands.values()).sum();
    let queries: u64 = tallies.iter().map(|t| t.queries).sum::<u64>() + ACCOUNTS;
    let moved: u64 = tallies.iter().map(|t| t.transfers).sum();
    let refused: u64 = tallies.iter().map(|t| t.refused).sum();
    if !checks.is_empty() {
        return Err(Error::Internal(checks.join("; ")));
    }
    Ok(format!(
        "exactly-once: OK seed {seed}: {commands} commands applied once each ({moved} transfers, {refused} refused), \
         total balance {total} = {deposits} deposits summing {deposited}, {queries} queries answered, \
         {audited} deposits audited once each by a hosted application actor; \
         {} kills, {} region restarts, {} job restarts, {} supervisor restarts",
        report.kills, report.restarts, report.job_restarts, report.supervisor_restarts
    ))
}

fn main() {
    snapflow::chaos::quiet_chaos_panics();
    let seed = arg("--seed", 42);
    let transfers = arg("--transfers", 60);
    let deposits = arg("--deposits", 20_000);
    let system = actix::System::new();
    match system.block_on(run(seed, transfers, deposits)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("actor_accounts FAILED (seed {seed}): {e}");
            std::process::exit(1);
        }
    }
}
