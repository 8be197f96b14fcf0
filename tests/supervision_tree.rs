//! The supervisor tree from outside (issue 11): a fatal error is not restarted, each failover
//! region spends only its own restart budget and then escalates to the job, and a full restart
//! of the job after an escalation keeps the output exact.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chaos_config, check_updates, counting_log, keyed_job, Events, PassThrough};
use snapflow::checkpoint::{CheckpointStorage, MemoryCheckpointStorage, TaskId};
use snapflow::prelude::*;
use snapflow::state::Redistribution;
use snapflow::CollectSink;

/// Registers one operator state under one name with two value types: a mistake in the
/// program, which no restart can fix (`Error::StateTypeMismatch`, class Fatal).
#[derive(Clone)]
struct WrongStateType;

impl Operator<(u64, u64), (u64, u64)> for WrongStateType {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<()> {
        ctx.state()
            .list_state::<u64>("seen", Redistribution::Split)?;
        ctx.state()
            .list_state::<String>("seen", Redistribution::Split)?;
        Ok(())
    }

    fn process(
        &mut self,
        r: (u64, u64),
        _ctx: &mut OperatorContext<'_>,
        out: &mut Collector<(u64, u64)>,
    ) -> Result<()> {
        out.emit(r);
        Ok(())
    }
}

fn region_tasks(events: &[JobEvent], tasks: &[TaskId]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, JobEvent::Restarting { tasks: t, .. } if t == tasks))
        .count()
}

fn slice(index: u32) -> Vec<TaskId> {
    ["source", "pass", "sink"]
        .iter()
        .map(|v| TaskId::new(*v, index).expect("task id"))
        .collect()
}

#[actix_rt::test]
async fn a_fatal_error_fails_the_job_after_one_attempt_with_that_error() {
    let mut config = chaos_config(Threads::Arbiters(2));
    config.restart = RestartStrategy::FixedDelay {
        delay: Duration::from_millis(1),
        max_attempts: 1_000,
    };
    let job = common::memory_job("fatal", config);
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(100, 5, 2)).bounded(),
    )
    .process("pass", WrongStateType)
    .sink("sink", CollectSink::new());
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let error = common::run_to_end(job)
        .await
        .expect_err("a fatal error fails the job");
    let events = events.until_the_end().await;
    match &error {
        Error::InTask { task, source } => {
            assert_eq!(task.vertex, "pass", "{error}");
            assert!(
                matches!(**source, Error::StateTypeMismatch { .. }),
                "the job fails with the fatal error itself: {error}"
            );
        }
        other => panic!("expected the fatal error with its task, got {other}"),
    }
    assert_eq!(error.class(), ErrorClass::Fatal);
    let restarts = events
        .iter()
        .filter(|e| matches!(e, JobEvent::Restarting { .. }))
        .count();
    let failed = events
        .iter()
        .filter(|e| matches!(e, JobEvent::TaskFailed { .. }))
        .count();
    assert_eq!(
        (restarts, failed),
        (0, 1),
        "one attempt, no restart: {events:?}"
    );
}

#[actix_rt::test]
async fn a_flapping_region_exhausts_its_own_budget_and_escalates_while_another_regions_budget_is_untouched(
) {
    // Two failover regions (source -> pass -> sink, all forward, parallelism 2). Task pass[0]
    // fails in every open: its region flaps. Task pass[1] fails twice in its life.
    let mut config = chaos_config(Threads::Arbiters(2));
    config.restart = RestartStrategy::FixedDelay {
        delay: Duration::from_millis(1),
        max_attempts: 3,
    };
    config.job_restart = RestartStrategy::FixedDelay {
        delay: Duration::from_millis(1),
        max_attempts: 1,
    };
    let second = Arc::new(AtomicU32::new(0));
    let pass = PassThrough {
        on_open: Arc::new(move |index| {
            if index == 0 || second.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(Error::Internal(format!("pass[{index}] fails in open")))
            } else {
                Ok(())
            }
        }),
    };
    let job = common::memory_job("flapping", config);
    job.source(
        "source",
        LogSource::<(u64, u64)>::msgpack(counting_log(1_000, 5, 2)).bounded(),
    )
    .process("pass", pass)
    .sink("sink", CollectSink::new());
    let (tap, mut events) = Events::tap();
    job.events(tap);
    let error = common::run_to_end(job)
        .await
        .expect_err("the job gives up once every level has");
    let events = events.until_the_end().await;
    let (r0, r1) = (slice(0), slice(1));
    // Region 0 used its 3 restarts before and 3 after the one full restart; region 1 its two
    // failures, never more (a shared budget of 3 would have given region 0 one restart).
    assert_eq!(region_tasks(&events, &r0), 6, "{events:?}");
    assert_eq!(region_tasks(&events, &r1), 2, "{events:?}");
    let escalations: Vec<&Vec<TaskId>> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Escalated { tasks, .. } => Some(tasks),
            _ => None,
        })
        .collect();
    assert_eq!(
        escalations,
        vec![&r0],
        "only region 0 escalates, once per budget spent: {events:?}"
    );
    let full: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Restarting { tasks, attempt, .. } if tasks.len() == 6 => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(full, vec![1], "one full restart of the job: {events:?}");
    match &error {
        Error::RestartsExhausted { reason, source } => {
            assert!(
                reason
                    .starts_with("region 0: 3 restarts allowed, all used; job: 1 restarts allowed"),
                "{reason}"
            );
            assert!(
                source.to_string().contains("pass[0] fails in open"),
                "{source}"
            );
        }
        other => panic!("expected RestartsExhausted, got {other}"),
    }
}

#[actix_rt::test]
async fn a_full_restart_after_an_escalation_keeps_the_output_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (n, keys) = (20_000, 10);
    let mut config = chaos_config(Threads::Arbiters(2));
    // A region may restart once; its second failure escalates to a full restart.
    config.restart = RestartStrategy::FixedDelay {
        delay: Duration::from_millis(2),
        max_attempts: 1,
    };
    config.job_restart = RestartStrategy::FixedDelay {
        delay: Duration::from_millis(2),
        max_attempts: 3,
    };
    // The first three opens of stage[1] fail: a region restart, then a full restart, then a
    // region restart again (its budget is fresh after the full restart).
    let opens = Arc::new(AtomicU32::new(0));
    let stage = PassThrough {
        on_open: Arc::new(move |index| {
            if index == 1 && opens.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(Error::Internal("stage[1] fails in open".into()))
            } else {
                Ok(())
            }
        }),
    };
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(MemoryCheckpointStorage::new("escalate").expect("storage"));
    let job = keyed_job(
        "escalate",
        config,
        storage,
        counting_log(n, keys, 2),
        &out,
        stage,
    );
    let report = common::run_to_end(job).await.expect("the job recovers");
    assert_eq!(
        (report.restarts, report.job_restarts),
        (2, 1),
        "{:?}",
        report.events
    );
    assert_eq!(check_updates(&out, n, keys), (n, 0, 0));
}

#[actix_rt::test]
async fn a_checkpoint_coordinator_that_keeps_dying_spends_its_own_budget_and_fails_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut config = chaos_config(Threads::Arbiters(2));
    config.coordinator_restart = RestartStrategy::FixedDelay {
        delay: Duration::from_millis(1),
        max_attempts: 3,
    };
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(MemoryCheckpointStorage::new("coordinator").expect("storage"));
    let job = keyed_job(
        "coordinator",
        config,
        storage,
        counting_log(2_000_000, 10, 2),
        &out,
        PassThrough {
            on_open: Arc::new(|_| Ok(())),
        },
    );
    job.chaos(
        snapflow::chaos::ChaosMonkey::new(5)
            .kills(vec![snapflow::chaos::Kill::Coordinator])
            .every(Duration::from_millis(20)),
    );
    let error = common::run_to_end(job)
        .await
        .expect_err("the coordinator's budget runs out");
    match &error {
        Error::RestartsExhausted { reason, source } => {
            assert!(reason.contains("checkpoint coordinator"), "{error}");
            assert!(matches!(**source, Error::ActorGone { .. }), "{error}");
        }
        other => panic!("expected RestartsExhausted, got {other}"),
    }
}
