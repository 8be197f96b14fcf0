//! Typed ingress and the exactly-once actor sink: records the application sends through an
//! ingress reach the job once, and the receiving actor sees each output once, with no
//! deduplication of its own, under random kills; bad addresses give clear errors.
//!
//! Seeds: `SNAPFLOW_ACTOR_SEEDS` (default 20) runs per randomized test; a failure prints its
//! seed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use snapflow::chaos::{ChaosMonkey, Kill, Moment};
use snapflow::prelude::*;
use snapflow::{Ingest, SinkOutput};

use common::{chaos_config, poll_until};

/// Every output a receiver was given, in order.
type Outputs = Arc<Mutex<Vec<SinkOutput<(u64, u64)>>>>;

/// The application's receiver: keeps every output it is given, duplicates included.
struct Receiver(Outputs);

impl Actor for Receiver {
    type Context = Context<Self>;
}

impl Handler<SinkOutput<(u64, u64)>> for Receiver {
    type Result = ();
    fn handle(&mut self, msg: SinkOutput<(u64, u64)>, _: &mut Context<Self>) {
        self.0.lock().expect("receiver").push(msg);
    }
}

const KEYS: u64 = 13;

fn counting_job(
    name: &str,
    config: JobConfig,
    to: Recipient<SinkOutput<(u64, u64)>>,
) -> JobBuilder {
    let job = common::memory_job(name, config);
    let input: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(3));
    job.ingress::<(u64, u64)>("numbers", input)
        .key_by(|r: &(u64, u64)| r.0)
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("receiver", ActorSink::new(to));
    job
}

/// Checks that the receiver got, per key, the counts 1..=n exactly once each, in order.
fn check_outputs(seed: u64, got: &[SinkOutput<(u64, u64)>], sent: u64) {
    let mut per_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for o in got {
        per_key.entry(o.value.0).or_default().push(o.value.1);
    }
    let total: usize = per_key.values().map(Vec::len).sum();
    for (key, counts) in &per_key {
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(
            counts, &expected,
            "seed {seed}: key {key} saw a duplicate or a gap"
        );
    }
    assert_eq!(
        total as u64, sent,
        "seed {seed}: outputs lost or duplicated"
    );
}

async fn egress_run(seed: u64) -> u32 {
    const RECORDS: u64 = 3_000;
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver(Arc::clone(&got)).start();
    let job = counting_job(
        "egress",
        chaos_config(Threads::Arbiters(2)),
        receiver.recipient(),
    );
    job.chaos(
        ChaosMonkey::new(seed)
            .random_interval(Duration::from_millis(5), Duration::from_millis(25))
            .kills(vec![
                Kill::PanicInUserCode,
                Kill::StopFromOutside,
                Kill::At(Moment::BetweenPreCommitAndCommit),
            ])
            .max_kills(8),
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let ingress = handle.ingress::<(u64, u64)>("numbers").expect("ingress");
    let recipient = ingress.recipient();
    for i in 0..RECORDS {
        let record = (i % KEYS, 1);
        let sent = if i % 2 == 0 {
            ingress.send_keyed(&record.0, &record).await
        } else {
            recipient
                .send(Ingest::new(record))
                .await
                .expect("ingress actor")
        };
        sent.unwrap_or_else(|e| panic!("seed {seed}: ingress failed: {e}"));
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let all_in = poll_until(Duration::from_secs(60), || {
        got.lock().expect("receiver").len() as u64 >= RECORDS
    })
    .await;
    handle.stop();
    let report = handle
        .wait()
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(all_in, "seed {seed}: the outputs never all arrived");
    check_outputs(seed, &got.lock().expect("receiver"), RECORDS);
    report.kills
}

#[actix::test]
async fn the_egress_receiver_sees_every_output_once_with_no_gap_under_random_kills() {
    snapflow::chaos::quiet_chaos_panics();
    let mut kills = 0;
    for i in 0..common::seeds(20) {
        kills += egress_run(0xE6_0000 + i).await;
    }
    assert!(kills > 0, "the runs were not disturbed");
}

#[actix::test]
async fn bad_addresses_and_ingress_after_the_end_give_clear_errors() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver(Arc::clone(&got)).start();
    let job = counting_job(
        "errors",
        chaos_config(Threads::Arbiters(1)),
        receiver.recipient(),
    );
    let handle = job.build().expect("build").start().await.expect("start");
    let missing = handle
        .ingress::<(u64, u64)>("nope")
        .expect_err("no such vertex");
    assert!(
        matches!(&missing, Error::NoSuchEndpoint { reason, .. } if reason.contains("no vertex named 'nope'") && reason.contains("numbers")),
        "{missing}"
    );
    let not_ingress = handle
        .ingress::<(u64, u64)>("count")
        .expect_err("not an ingress");
    assert!(
        matches!(&not_ingress, Error::NoSuchEndpoint { reason, .. } if reason.contains("'count' is not an ingress")),
        "{not_ingress}"
    );
    let wrong_type = handle.ingress::<String>("numbers").expect_err("wrong type");
    assert!(
        matches!(&wrong_type, Error::NoSuchEndpoint { reason, .. } if reason.contains("(u64, u64)") && reason.contains("String")),
        "{wrong_type}"
    );
    let ingress = handle.ingress::<(u64, u64)>("numbers").expect("ingress");
    ingress.send(&(1, 1)).await.expect("accepted while running");
    handle.stop();
    handle.wait().await.expect("stopped");
    let after = ingress.send(&(1, 1)).await.expect_err("the job ended");
    assert!(matches!(after, Error::JobEnded { .. }), "{after}");
    assert_eq!(after.class(), ErrorClass::Fatal);
}

#[actix::test]
async fn the_job_trims_its_ingress_log_once_no_retained_checkpoint_needs_the_records() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver(Arc::clone(&got)).start();
    let job = common::memory_job("trim", chaos_config(Threads::Arbiters(1)));
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(1));
    job.ingress::<(u64, u64)>("numbers", Arc::clone(&log))
        .key_by(|r: &(u64, u64)| r.0)
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("receiver", ActorSink::new(receiver.recipient()));
    let handle = job.build().expect("build").start().await.expect("start");
    let ingress = handle.ingress::<(u64, u64)>("numbers").expect("ingress");
    for i in 0..1_000 {
        ingress.send(&(i % KEYS, 1)).await.expect("send");
    }
    let all_in = poll_until(Duration::from_secs(30), || {
        got.lock().expect("receiver").len() == 1_000
    })
    .await;
    assert!(all_in, "the outputs never all arrived");
    // Once more checkpoints than the storage retains have completed past the last record,
    // everything before it is dropped.
    let trimmed = poll_until(Duration::from_secs(30), || {
        log.start_offset(PartitionId(0)).expect("start") == LogOffset(1_000)
    })
    .await;
    handle.stop();
    handle.wait().await.expect("stopped");
    assert!(
        trimmed,
        "the ingress log still starts at {}",
        log.start_offset(PartitionId(0)).expect("start")
    );
}
