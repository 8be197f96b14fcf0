//! An application actor hosted by the job (`ActorParticipant`): its state joins the job's
//! checkpoints, and when it (or a task) is killed it is restored from its snapshot and the
//! records since are replayed, so it ends with the same state as a failure-free run.
//!
//! Seeds: `SNAPFLOW_ACTOR_SEEDS` (default 20); a failure prints its seed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use snapflow::chaos::{ChaosMonkey, Kill};
use snapflow::prelude::*;
use snapflow::sink::{ActorParticipant, CheckpointedActor, Deliver};

use common::{chaos_config, counting_log, run_to_end};

/// Per key: updates received, the last count, the sum of all counts received (a duplicate or
/// a gap changes the sum).
#[derive(Default)]
struct Dashboard {
    keys: BTreeMap<u64, (u64, u64, u64)>,
}

impl Actor for Dashboard {
    type Context = Context<Self>;
}

impl Handler<Deliver<(u64, u64)>> for Dashboard {
    type Result = ();
    fn handle(&mut self, Deliver((k, c)): Deliver<(u64, u64)>, _: &mut Context<Self>) {
        let e = self.keys.entry(k).or_default();
        e.0 += 1;
        e.1 = c;
        e.2 += c;
    }
}

impl CheckpointedActor for Dashboard {
    type State = BTreeMap<u64, (u64, u64, u64)>;
    fn snapshot(&self) -> Self::State {
        self.keys.clone()
    }
    fn restore(&mut self, state: Self::State) {
        self.keys = state;
    }
}

snapflow::checkpointed_actor!(Dashboard);

type State = Vec<Option<BTreeMap<u64, (u64, u64, u64)>>>;

async fn run(chaos: Option<u64>) -> (State, u32) {
    let dashboard = ActorParticipant::new(Dashboard::default);
    let job = common::memory_job("dashboard", chaos_config(Threads::Arbiters(2)));
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(30_000, 13, 2)).bounded(),
    )
    .process("slow", common::Stage::new(200))
    .key_by(|(k, _): &(u64, u64)| *k)
    .reduce("count", |a, b| (a.0, a.1 + b.1))
    .sink("dashboard", dashboard.clone());
    if let Some(seed) = chaos {
        job.chaos(
            ChaosMonkey::new(seed)
                .random_interval(Duration::from_millis(20), Duration::from_millis(60))
                .kills(vec![
                    Kill::ApplicationActor,
                    Kill::ApplicationActor,
                    Kill::PanicInUserCode,
                    Kill::StopFromOutside,
                ])
                .max_kills(6),
        );
    }
    let report = run_to_end(job)
        .await
        .unwrap_or_else(|e| panic!("seed {chaos:?}: {e}"));
    let state = (0..2)
        .map(|t| dashboard.last_snapshot(t).expect("snapshot"))
        .collect();
    (state, report.kills)
}

#[actix::test]
async fn a_hosted_application_actor_killed_at_random_ends_with_the_state_of_a_failure_free_run() {
    snapflow::chaos::quiet_chaos_panics();
    let (clean, _) = run(None).await;
    assert!(clean.iter().all(Option::is_some), "no final snapshot");
    let seeds = common::seeds(20);
    let mut kills = 0;
    for i in 0..seeds {
        let seed = 0xDA_0000 + i;
        let (state, k) = run(Some(seed)).await;
        assert_eq!(
            state, clean,
            "seed {seed}: the actor's state differs from a failure-free run"
        );
        kills += k;
    }
    eprintln!("{kills} kills over {seeds} seeds");
    assert!(kills > 0, "the runs were not disturbed");
}
