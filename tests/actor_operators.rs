//! Operators written as actors: commands applied exactly once, queries answered from live
//! state, durable replies, and clear errors for bad addresses, all under random kills.
//!
//! Seeds: `SNAPFLOW_ACTOR_SEEDS` (default 20) runs per randomized test; a failure prints its
//! seed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::prelude::*;
use snapflow::{
    ActorOperator, Command, CommandHandler, Commands, InstanceCommandHandler, InstanceCommands,
    InstanceOperator, InstanceQueryContext, InstanceQueryHandler, Query, QueryContext,
    QueryHandler,
};

use common::{chaos_config, counting_log, splitmix};

#[path = "../examples/common/bank.rs"]
mod bank;

use bank::{Account, Bank, Deposit, Read, Withdraw};

const ACCOUNTS: u64 = 16;

fn bank_job(name: &str, config: JobConfig, deposits: u64) -> JobBuilder {
    let job = common::memory_job(name, config);
    let commands: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    job.source(
        "deposits",
        LogSource::msgpack(counting_log(deposits, ACCOUNTS, 2)),
    )
    .key_by(|d: &(u64, u64)| d.0)
    .actor("bank", Bank::default(), commands)
    .sink("out", CollectSink::new());
    job
}

/// What one application actor sent, counted from its own side.
#[derive(Debug, Default)]
struct Sent {
    commands: HashMap<u64, u64>,
    /// Deposits minus successful withdrawals, from the durable replies.
    net: i64,
    queries: u64,
    unavailable: u64,
}

/// One application client: random deposits, withdrawals and queries to random accounts.
async fn client(bank: OperatorRef<Bank>, seed: u64, n: u64) -> Result<Sent> {
    let mut rng = seed;
    let mut sent = Sent::default();
    let mut durables = Vec::new();
    for _ in 0..n {
        let key = splitmix(&mut rng) % ACCOUNTS;
        let amount = (splitmix(&mut rng) % 5 + 1) as i64;
        match splitmix(&mut rng) % 3 {
            0 => {
                let applied = bank.command(key, Deposit(amount)).await?;
                *sent.commands.entry(key).or_default() += 1;
                durables.push(tokio::spawn(async move {
                    applied.durable().await.map(|_| amount)
                }));
            }
            1 => {
                let applied = bank.command(key, Withdraw(amount)).await?;
                *sent.commands.entry(key).or_default() += 1;
                durables.push(tokio::spawn(async move {
                    applied
                        .durable()
                        .await
                        .map(|done| if done { -amount } else { 0 })
                }));
            }
            _ => match bank.query(key, Read).await {
                Ok(_) => sent.queries += 1,
                Err(e @ Error::Unavailable { .. }) => {
                    assert!(e.is_retryable());
                    sent.unavailable += 1;
                }
                Err(e) => return Err(e),
            },
        }
    }
    for d in durables {
        sent.net += d.await.expect("durable task")?;
    }
    Ok(sent)
}

/// Queries every account until the stream's deposits are all seen, then returns them.
async fn settle(bank: &OperatorRef<Bank>, deposits: u64) -> Vec<Account> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        for key in 0..ACCOUNTS {
            match bank.query(key, Read).await {
                Ok(a) => all.push(a),
                Err(Error::Unavailable { .. }) => break,
                Err(e) => panic!("query failed: {e}"),
            }
        }
        let seen: u64 = all.iter().map(|a| a.deposits_seen).sum();
        if all.len() == ACCOUNTS as usize && seen == deposits {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deposits never all seen ({seen} of {deposits})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One run: (kills, restarts, queries answered, queries that found the task restarting).
async fn bank_run(seed: u64) -> (u32, u32, u64, u64) {
    const DEPOSITS: u64 = 20_000;
    let mut config = chaos_config(Threads::Arbiters(2));
    config.query_timeout = Duration::from_secs(20);
    let job = bank_job("bank", config, DEPOSITS);
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(5), Duration::from_millis(25))
            .kills(vec![Kill::PanicInUserCode, Kill::StopFromOutside])
            .max_kills(8),
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let bank = handle.operator::<Bank>("bank").expect("address");
    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client(bank.clone(), seed ^ ((c + 1) * 0x9E37), 150)))
        .collect();
    let mut sent = Vec::new();
    for c in clients {
        sent.push(
            c.await
                .expect("client")
                .unwrap_or_else(|e| panic!("seed {seed}: {e}")),
        );
    }
    let accounts = settle(&bank, DEPOSITS).await;
    let total: i64 = accounts.iter().map(|a| a.balance).sum();
    let net: i64 = sent.iter().map(|s| s.net).sum();
    assert_eq!(
        total,
        DEPOSITS as i64 + net,
        "seed {seed}: money was made or lost"
    );
    for key in 0..ACCOUNTS {
        let expected: u64 = sent
            .iter()
            .map(|s| s.commands.get(&key).copied().unwrap_or(0))
            .sum();
        assert_eq!(
            accounts[key as usize].commands, expected,
            "seed {seed}: account {key} applied a command other than once"
        );
    }
    let answered: u64 = sent.iter().map(|s| s.queries).sum();
    let unavailable: u64 = sent.iter().map(|s| s.unavailable).sum();
    handle.stop();
    let report = handle
        .wait()
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(report.end, JobEnd::Stopped);
    (
        report.kills,
        report.restarts + report.job_restarts,
        answered,
        unavailable,
    )
}

#[actix::test]
async fn every_command_is_applied_exactly_once_and_every_query_answered_under_random_kills() {
    snapflow::chaos::quiet_chaos_panics();
    let (mut kills, mut restarts, mut answered, mut unavailable) = (0, 0, 0, 0);
    for i in 0..common::seeds(20) {
        let (k, r, a, u) = bank_run(0xB4_0000 + i).await;
        kills += k;
        restarts += r;
        answered += a;
        unavailable += u;
    }
    eprintln!("{kills} kills, {restarts} restarts, {answered} queries answered, {unavailable} unavailable");
    assert!(kills > 0 && restarts > 0, "the runs were not disturbed");
    assert!(answered > 0, "no query was answered");
}

/// A query the bank refuses.
struct Refused;

impl Query for Refused {
    type Reply = ();
}

impl QueryHandler<Refused> for Bank {
    fn query(&self, _q: Refused, _ctx: &QueryContext<'_, u64>) -> Result<()> {
        Err(Error::Config("refused on purpose".into()))
    }
}

/// A command that fails after changing nothing.
#[derive(Debug, Serialize, Deserialize)]
struct Explode;

impl Command for Explode {
    type Reply = ();
}

impl CommandHandler<Explode> for Bank {
    fn command(
        &mut self,
        _c: Explode,
        _ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        panic!("explode on purpose")
    }
}

/// Another actor operator type, to ask for the bank under the wrong type.
#[derive(Clone)]
struct NotTheBank;

impl ActorOperator for NotTheBank {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, i64);

    fn process(
        &mut self,
        _r: (u64, u64),
        _ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        Ok(())
    }
}

#[actix::test]
async fn bad_addresses_failing_handlers_and_messages_after_the_end_give_clear_errors() {
    let mut config = chaos_config(Threads::Arbiters(1));
    config.query_timeout = Duration::from_secs(20);
    let handle = bank_job("bank-errors", config, 1_000)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let no_such = |e: &Error, text: &str| matches!(e, Error::NoSuchEndpoint { reason, .. } if reason.contains(text));
    let e = handle.operator::<Bank>("nope").expect_err("no vertex");
    assert!(
        no_such(&e, "there is no vertex named 'nope' (the job has: bank)"),
        "{e}"
    );
    let e = handle.operator::<Bank>("deposits").expect_err("a source");
    assert!(
        no_such(&e, "vertex 'deposits' is not an actor operator"),
        "{e}"
    );
    let e = handle
        .operator::<NotTheBank>("bank")
        .expect_err("wrong type");
    assert!(no_such(&e, "Bank, not") && no_such(&e, "NotTheBank"), "{e}");

    let bank = handle.operator::<Bank>("bank").expect("address");
    let e = bank.query(3, Refused).await.expect_err("refused");
    assert!(
        matches!(&e, Error::HandlerFailed { source, .. } if source.to_string().contains("refused on purpose")),
        "{e}"
    );
    // Undeclared in `commands()`: answered with an error, the task goes on.
    let e = bank.command(3, Explode).await.expect_err("undeclared");
    assert!(
        matches!(&e, Error::NoSuchEndpoint { what, .. } if what.contains("takes no command")),
        "{e}"
    );
    let applied = bank.command(3, Deposit(10)).await.expect("deposit");
    let durable = applied.reply;
    assert_eq!(applied.durable().await.expect("durable"), durable);
    assert!(
        !handle.metrics().checkpoints.is_empty(),
        "durable before a checkpoint completed"
    );
    assert!(bank.query(3, Read).await.expect("read").balance >= 10);

    handle.stop();
    handle.wait().await.expect("stopped");
    let e = bank.query(3, Read).await.expect_err("ended");
    assert!(matches!(e, Error::JobEnded { .. }), "{e}");
    let e = bank.command(3, Deposit(1)).await.expect_err("ended");
    assert!(matches!(e, Error::JobEnded { .. }), "{e}");
}

/// Declares `Explode` too, so that its panic is the handler's.
#[derive(Clone, Default)]
struct ExplodingBank(Bank);

#[actix::test]
async fn a_panicking_command_handler_fails_its_command_and_not_the_task() {
    let job = common::memory_job("bank-panic", chaos_config(Threads::Arbiters(1)));
    let commands: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    job.source(
        "deposits",
        LogSource::msgpack(counting_log(100, ACCOUNTS, 1)),
    )
    .key_by(|d: &(u64, u64)| d.0)
    .actor("bank", ExplodingBank::default(), commands)
    .sink("out", CollectSink::new());
    let handle = job.build().expect("build").start().await.expect("start");
    let bank = handle.operator::<ExplodingBank>("bank").expect("address");
    snapflow::chaos::quiet_chaos_panics();
    let e = bank.command(1, Explode).await.expect_err("panics");
    assert!(
        matches!(&e, Error::HandlerFailed { source, .. } if matches!(**source, Error::Panic { .. })),
        "{e}"
    );
    let after = bank.command(1, Deposit(5)).await.expect("the task goes on");
    assert!(after.reply >= 5);
    handle.stop();
    let report = handle.wait().await.expect("stopped");
    assert_eq!(report.restarts, 0, "a failing command restarted the task");
}

impl ActorOperator for ExplodingBank {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, i64);

    fn commands(commands: &mut Commands<Self>) {
        commands.add::<Deposit>().add::<Explode>();
    }

    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.0.open(ctx)
    }

    fn process(
        &mut self,
        r: (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        self.0.process(r, ctx, out)
    }
}

impl CommandHandler<Deposit> for ExplodingBank {
    fn command(
        &mut self,
        c: Deposit,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, i64)>,
    ) -> Result<i64> {
        CommandHandler::<Deposit>::command(&mut self.0, c, ctx, out)
    }
}

impl CommandHandler<Explode> for ExplodingBank {
    fn command(
        &mut self,
        c: Explode,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        CommandHandler::<Explode>::command(&mut self.0, c, ctx, out)
    }
}

/// Registers an event-time timer per record and counts the timers that fired, per key.
#[derive(Clone, Default)]
struct Clock {
    fired: Option<snapflow::state::ValueState<u64>>,
}

/// How many of a key's timers fired.
struct Fired;

impl Query for Fired {
    type Reply = u64;
}

impl ActorOperator for Clock {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, i64);

    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.fired = Some(ctx.state().value_state("fired")?);
        Ok(())
    }

    fn process(
        &mut self,
        (_, ts): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        ctx.register_event_timer(ts as i64)
    }

    fn on_timer(
        &mut self,
        _ts: Timestamp,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        if let Some(f) = &self.fired {
            *f.get_or_insert_with(ctx.state(), || 0)? += 1;
        }
        Ok(())
    }
}

impl QueryHandler<Fired> for Clock {
    fn query(&self, _q: Fired, ctx: &QueryContext<'_, u64>) -> Result<u64> {
        let Some(f) = &self.fired else { return Ok(0) };
        Ok(f.get(ctx.state())?.copied().unwrap_or(0))
    }
}

#[actix::test]
async fn the_command_channels_do_not_hold_back_an_actor_operators_event_time() {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    let records: Vec<(u64, u64)> = (0..1_000).map(|i| (i % 4, i)).collect();
    typed
        .append_batch(PartitionId(0), &records)
        .expect("append");
    let job = common::memory_job("clock", chaos_config(Threads::Arbiters(1)));
    let commands: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    job.source(
        "events",
        LogSource::<(u64, u64)>::msgpack(log).event_time(
            |r: &(u64, u64)| r.1 as i64,
            WatermarkStrategy::BoundedOutOfOrderness(0),
        ),
    )
    .key_by(|r: &(u64, u64)| r.0)
    .actor("clock", Clock::default(), commands)
    .sink("out", CollectSink::new());
    let handle = job.build().expect("build").start().await.expect("start");
    let clock = handle.operator::<Clock>("clock").expect("address");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut fired = 0;
    while fired == 0 && tokio::time::Instant::now() < deadline {
        fired = clock.query(0, Fired).await.expect("query");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop();
    handle.wait().await.expect("stopped");
    assert!(
        fired > 0,
        "no event-time timer fired: the watermark is stuck"
    );
}

#[test]
fn an_actor_operator_without_aligned_checkpoints_is_refused_at_build() {
    let mut config = chaos_config(Threads::Arbiters(1));
    config.mode = snapflow::checkpoint::CheckpointMode::AtLeastOnce;
    let e = bank_job("bank-unaligned", config, 10)
        .build()
        .expect_err("refused");
    assert!(
        matches!(&e, Error::Config(m) if m.contains("'bank' needs exactly-once checkpoints")),
        "{e}"
    );
}

/// A non-keyed actor operator: each instance counts its records and the amounts its `Add`
/// commands brought, in one split list element.
#[derive(Clone, Default)]
struct Tally {
    totals: Option<snapflow::state::OperatorListState<Totals>>,
}

/// What one instance of `Tally` has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Totals {
    records: u64,
    added: u64,
    commands: u64,
}

/// Adds to the instance's total; replies with the new total.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Add(u64);

impl Command for Add {
    type Reply = u64;
    fn name() -> &'static str {
        "tally.add"
    }
}

/// Reads the instance's totals.
#[derive(Debug, Clone)]
struct ReadTotals;

impl Query for ReadTotals {
    type Reply = Totals;
}

impl Tally {
    fn totals(&self, state: &snapflow::state::OperatorStateBackend) -> Result<Totals> {
        let list = self.totals.as_ref().expect("opened");
        Ok(list.get(state)?.first().copied().unwrap_or_default())
    }

    fn change(&self, ctx: &mut OperatorContext<'_>, f: impl FnOnce(&mut Totals)) -> Result<Totals> {
        let mut t = self.totals(ctx.state())?;
        f(&mut t);
        let list = self.totals.as_ref().expect("opened");
        list.update(ctx.state(), vec![t])?;
        Ok(t)
    }
}

impl InstanceOperator for Tally {
    type In = (u64, u64);
    type Out = u64;

    fn commands(commands: &mut InstanceCommands<Self>) {
        commands.add::<Add>();
    }

    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<()> {
        let list = ctx
            .state()
            .list_state("totals", snapflow::state::Redistribution::Split)?;
        self.totals = Some(list);
        Ok(())
    }

    fn process(
        &mut self,
        _record: (u64, u64),
        ctx: &mut OperatorContext<'_>,
        _out: &mut Collector<u64>,
    ) -> Result<()> {
        self.change(ctx, |t| t.records += 1).map(|_| ())
    }
}

impl InstanceCommandHandler<Add> for Tally {
    fn command(
        &mut self,
        command: Add,
        ctx: &mut OperatorContext<'_>,
        out: &mut Collector<u64>,
    ) -> Result<u64> {
        let t = self.change(ctx, |t| {
            t.added += command.0;
            t.commands += 1;
        })?;
        out.emit(t.added);
        Ok(t.added)
    }
}

impl InstanceQueryHandler<ReadTotals> for Tally {
    fn query(&self, _q: ReadTotals, ctx: &InstanceQueryContext<'_>) -> Result<Totals> {
        self.totals(ctx.state())
    }
}

fn tally_job(name: &str, config: JobConfig, records: u64) -> JobBuilder {
    let job = common::memory_job(name, config);
    let commands: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    job.source("numbers", LogSource::msgpack(counting_log(records, 7, 2)))
        .actor("tally", Tally::default(), commands)
        .sink("out", CollectSink::new());
    job
}

/// One run of the non-keyed tally: commands to single instances and to all of them, queries
/// by index and to all, under kills. Returns (kills, queries answered).
async fn tally_run(seed: u64) -> (u32, u64) {
    const RECORDS: u64 = 5_000;
    let mut config = chaos_config(Threads::Arbiters(2));
    config.query_timeout = Duration::from_secs(20);
    let job = tally_job("tally", config, RECORDS);
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(5), Duration::from_millis(25))
            .kills(vec![Kill::PanicInUserCode, Kill::StopFromOutside])
            .max_kills(4),
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let tally = handle.instance_operator::<Tally>("tally").expect("address");
    assert_eq!(tally.instances(), 2);
    let (mut sent, mut answered) = ([(0u64, 0u64); 2], 0u64);
    let mut durables = Vec::new();
    let mut rng = seed;
    for _ in 0..60 {
        let amount = splitmix(&mut rng) % 9 + 1;
        match splitmix(&mut rng) % 4 {
            0 => {
                for (i, applied) in tally.command_all(Add(amount)).await.into_iter().enumerate() {
                    durables.push(applied.unwrap_or_else(|e| panic!("seed {seed}: {e}")));
                    sent[i].0 += amount;
                    sent[i].1 += 1;
                }
            }
            1 => match tally.query(1, ReadTotals).await {
                Ok(_) => answered += 1,
                Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
                Err(e) => panic!("seed {seed}: {e}"),
            },
            n => {
                let i = (n - 2) as usize;
                let applied = tally
                    .command(i as u32, Add(amount))
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert!(
                    applied.reply >= amount,
                    "seed {seed}: the reply is the new total"
                );
                durables.push(applied);
                sent[i].0 += amount;
                sent[i].1 += 1;
            }
        }
    }
    // Once durable, no restore rolls a command back: the state must then hold them all.
    for d in futures::future::join_all(durables.into_iter().map(Applied::durable)).await {
        d.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let totals = loop {
        let all: Vec<Totals> = tally
            .query_all(ReadTotals)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        if all.len() == 2 && all.iter().map(|t| t.records).sum::<u64>() == RECORDS {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: records never all seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (i, t) in totals.iter().enumerate() {
        assert_eq!(
            (t.added, t.commands),
            sent[i],
            "seed {seed}: instance {i} applied a command other than once"
        );
    }
    handle.stop();
    let report = handle
        .wait()
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    (report.kills, answered)
}

#[actix::test]
async fn commands_to_instances_of_a_non_keyed_actor_operator_are_applied_exactly_once_under_random_kills(
) {
    snapflow::chaos::quiet_chaos_panics();
    let (mut kills, mut answered) = (0, 0);
    for i in 0..common::seeds(20) {
        let (k, a) = tally_run(0x1A_0000 + i).await;
        kills += k;
        answered += a;
    }
    eprintln!("{kills} kills, {answered} queries answered");
    assert!(kills > 0, "the runs were not disturbed");
    assert!(answered > 0, "no query was answered");
}

#[actix::test]
async fn a_non_keyed_actor_operator_refuses_bad_indexes_and_the_wrong_kind_of_address() {
    let handle = tally_job("tally-errors", chaos_config(Threads::Arbiters(1)), 100)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    let e = handle.operator::<Bank>("tally").expect_err("not keyed");
    assert!(
        matches!(&e, Error::NoSuchEndpoint { reason, .. } if reason.contains("non-keyed actor operator: address it with JobHandle::instance_operator")),
        "{e}"
    );
    let e = handle
        .instance_operator::<Tally>("numbers")
        .expect_err("a source");
    assert!(
        matches!(&e, Error::NoSuchEndpoint { reason, .. } if reason.contains("is not a non-keyed actor operator")),
        "{e}"
    );
    let tally = handle.instance_operator::<Tally>("tally").expect("address");
    let e = tally.query(2, ReadTotals).await.expect_err("no instance 2");
    assert!(
        matches!(&e, Error::NoSuchEndpoint { reason, .. } if reason.contains("it has 2 instances")),
        "{e}"
    );
    let e = tally.command(7, Add(1)).await.expect_err("no instance 7");
    assert!(matches!(e, Error::NoSuchEndpoint { .. }), "{e}");
    let applied = tally.command(0, Add(5)).await.expect("add");
    assert_eq!(applied.durable().await.expect("durable"), 5);
    let totals = tally.query(0, ReadTotals).await.expect("read");
    assert_eq!((totals.added, totals.commands), (5, 1));
    handle.stop();
    handle.wait().await.expect("stopped");
    let e = tally.query(0, ReadTotals).await.expect_err("ended");
    assert!(matches!(e, Error::JobEnded { .. }), "{e}");
}
