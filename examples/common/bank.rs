//! The bank of the actor-operator example and tests: one account per key, deposits from the
//! stream, `Deposit` and `Withdraw` commands, and a `Read` query.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use snapflow::prelude::*;
use snapflow::state::ValueState;
use snapflow::{
    ActorOperator, Command, CommandHandler, Commands, Query, QueryContext, QueryHandler,
};

/// A bank account per key: balance, deposits seen from the stream, commands applied.
#[derive(Clone, Default)]
pub(crate) struct Bank {
    account: Option<ValueState<Account>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    pub(crate) balance: i64,
    pub(crate) deposits_seen: u64,
    pub(crate) commands: u64,
}

/// Moves money in: always succeeds; replies with the new balance.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Deposit(pub(crate) i64);

impl Command for Deposit {
    type Reply = i64;
    fn name() -> &'static str {
        "deposit"
    }
}

/// Moves money out if the balance covers it; replies whether it did.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Withdraw(pub(crate) i64);

impl Command for Withdraw {
    type Reply = bool;
    fn name() -> &'static str {
        "withdraw"
    }
}

/// Reads one account.
pub(crate) struct Read;

impl Query for Read {
    type Reply = Account;
}

impl Bank {
    pub(crate) fn state(&self) -> Result<&ValueState<Account>> {
        self.account
            .as_ref()
            .ok_or_else(|| Error::Config("used before open".into()))
    }

    pub(crate) fn update(
        &self,
        ctx: &mut KeyedContext<'_, u64>,
        f: impl FnOnce(&mut Account),
    ) -> Result<Account> {
        let s = self.state()?;
        let a = s.get_or_insert_with(ctx.state(), Account::default)?;
        f(a);
        Ok(*a)
    }
}

impl ActorOperator for Bank {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, i64);

    fn commands(commands: &mut Commands<Self>) {
        commands.add::<Deposit>().add::<Withdraw>();
    }

    fn open(&mut self, ctx: &mut KeyedContext<'_, u64>) -> Result<()> {
        self.account = Some(ctx.state().value_state("account")?);
        Ok(())
    }

    fn process(
        &mut self,
        (key, amount): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<(u64, i64)>,
    ) -> Result<()> {
        let a = self.update(ctx, |a| {
            a.balance += amount as i64;
            a.deposits_seen += 1;
        })?;
        out.emit((key, a.balance));
        Ok(())
    }
}

impl CommandHandler<Deposit> for Bank {
    fn command(
        &mut self,
        Deposit(amount): Deposit,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<i64> {
        Ok(self
            .update(ctx, |a| {
                a.balance += amount;
                a.commands += 1;
            })?
            .balance)
    }
}

impl CommandHandler<Withdraw> for Bank {
    fn command(
        &mut self,
        Withdraw(amount): Withdraw,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Collector<(u64, i64)>,
    ) -> Result<bool> {
        let mut done = false;
        self.update(ctx, |a| {
            a.commands += 1;
            if a.balance >= amount {
                a.balance -= amount;
                done = true;
            }
        })?;
        Ok(done)
    }
}

impl QueryHandler<Read> for Bank {
    fn query(&self, _q: Read, ctx: &QueryContext<'_, u64>) -> Result<Account> {
        Ok(self.state()?.get(ctx.state())?.copied().unwrap_or_default())
    }
}
