//! A record that fails every time: the job gives up naming where it was read, or a dead-letter
//! policy sets it aside and the job goes on.

mod common;

use std::sync::Arc;
use std::time::Duration;

use snapflow::prelude::*;
use snapflow::runtime::DeadLetter;
use snapflow::{CollectSink, Error};

const POISON: u64 = 666;

/// Two partitions of `(i, i % 100)`, with one poison record at partition 1, offset 37.
fn log() -> Arc<dyn ReplayableLog> {
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    for p in 0..2u32 {
        for i in 0..100u64 {
            let v = if p == 1 && i == 37 { POISON } else { i % 100 };
            typed.append(PartitionId(p), &(i, v)).expect("append");
        }
    }
    log
}

fn config() -> JobConfig {
    JobConfig {
        parallelism: 2,
        batch_size: 16,
        threads: Threads::Current,
        restart: RestartStrategy::FixedDelay {
            delay: Duration::from_millis(1),
            max_attempts: 3,
        },
        ..JobConfig::default()
    }
}

fn check(r: (u64, u64)) -> (u64, u64) {
    if r.1 == POISON {
        panic!("cannot handle value {}", r.1);
    }
    r
}

#[test]
fn a_poison_pill_ends_the_job_with_its_partition_and_offset() {
    let job = common::memory_job("poison", config());
    job.source("source", LogSource::<(u64, u64)>::msgpack(log()).bounded())
        .map("check", check)
        .sink("sink", CollectSink::new());
    let err = job
        .build()
        .expect("build")
        .run()
        .expect_err("the poison pill fails the job");
    let text = err.to_string();
    assert!(text.contains("partition 1 offset 37"), "{text}");
    assert!(text.contains("cannot handle value 666"), "{text}");
    // The region spent its restarts, then the job its full restarts: the chain names both,
    // then the task and the record.
    let Error::RestartsExhausted { reason, source } = &err else {
        panic!("expected RestartsExhausted, got {err:?}");
    };
    assert!(
        reason.contains("region") && reason.contains("job:"),
        "{reason}"
    );
    assert!(
        matches!(&**source, Error::InTask { source, .. } if matches!(**source, Error::AtRecord { .. })),
        "{err:?}"
    );
}

#[test]
fn a_dead_letter_policy_routes_a_failing_record_and_the_job_continues() {
    let dead: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    let sink = CollectSink::<(u64, u64)>::new();
    let job = common::memory_job("dead-letter", config());
    job.source("source", LogSource::<(u64, u64)>::msgpack(log()).bounded())
        .dead_letter(Arc::clone(&dead))
        .map("check", check)
        .sink("sink", sink.clone());
    let report = job.build().expect("build").run().expect("the job goes on");
    assert_eq!(report.restarts, 0);
    assert_eq!(sink.records().len(), 199, "every other record arrives");
    let letters = TypedLog::<DeadLetter>::new(dead)
        .read(PartitionId(0), LogOffset(0), 10)
        .expect("read");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0].1;
    assert_eq!(letter.position, Some((PartitionId(1), LogOffset(37))));
    assert!(
        letter.error.contains("cannot handle value 666"),
        "{}",
        letter.error
    );
    let record: (u64, u64) =
        snapflow::log::codec::decode(&letter.record, "dead letter").expect("decode");
    assert_eq!(record, (37, POISON));
}
