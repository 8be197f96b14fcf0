//! Records per second through a Kafka source, and through a Kafka source and sink, at p = 2
//! on librdkafka's in-process mock cluster. N MessagePack records `(key, i)` are produced into
//! a 2-partition topic first (not timed). Then three bounded jobs read them (`KafkaLog`
//! source, decode, key_by, count per key, checkpoints every 1 s), timed from start to end:
//! - `source`: the counts go nowhere (only counted), which measures the source;
//! - `sink-exactly-once`: every count update goes to a 2-partition output topic through the
//!   exactly-once `KafkaSink` (one Kafka transaction per checkpoint);
//! - `sink-at-least-once`: the same through the idempotent at-least-once mode.
//!
//! Each checks itself: the number of count updates (read back from the output topic, for the
//! sinks) must equal the number of records the mock kept.
//!
//! Run: `cargo run --release --features kafka --example kafka_rate [-- --n N]` (default
//! 400,000: the mock keeps a bounded number of segments per partition, and a larger N loses
//! its oldest records there; the check counts what the mock kept). Prints one line per job,
//! `kafka-<job> p=2 N=... records_per_s=...`, and `OK`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use snapflow::checkpoint::CheckpointTiming;
use snapflow::kafka::{KafkaCodec, KafkaConfig, KafkaDelivery, KafkaLog, KafkaRecord, KafkaSink};
use snapflow::prelude::*;
use snapflow::{Error, Result};

const KEYS: u64 = 1_000;

fn produce(bootstrap: &str, topic: &str, n: u64) -> Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .map_err(|e| Error::Config(format!("producer: {e}")))?;
    for i in 0..n {
        let value = rmp_serde::to_vec(&(i % KEYS, i)).map_err(|e| Error::Config(e.to_string()))?;
        let key = (i % KEYS).to_le_bytes();
        let mut record = BaseRecord::to(topic)
            .partition((i % 2) as i32)
            .key(&key[..])
            .payload(&value);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    // The local queue is full: let deliveries drain it.
                    if !matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        return Err(Error::Config(format!("produce: {e}")));
                    }
                    p.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .map_err(|e| Error::Config(format!("flush: {e}")))
}

/// Where a job's count updates go.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    Counted,
    Sink(bool),
}

/// Runs one bounded counting job over `log`; returns (seconds, checkpoints, updates out).
fn run(log: &Arc<KafkaLog>, bootstrap: &str, out: Out, n: u64) -> Result<(f64, u64, u64)> {
    let seen = Arc::new(AtomicU64::new(0));
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_secs(1)),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("kafka-rate", config);
    job.checkpoint_in_memory();
    let counts = job
        .source(
            "kafka",
            log.source::<(u64, u64)>(KafkaCodec::MessagePack).bounded(),
        )
        .map("value", |r: KafkaRecord<(u64, u64)>| (r.value.0, 1u64))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("count", |a, b| (a.0, a.1 + b.1));
    let topic = match out {
        Out::Counted => {
            let counted = Arc::clone(&seen);
            counts
                .filter("last", move |(_, c): &(u64, u64)| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    *c == n / KEYS
                })
                .sink("sink", snapflow::sink::CollectSink::new());
            None
        }
        Out::Sink(exactly_once) => {
            let (topic, delivery) = if exactly_once {
                let prefix = "kafka-rate".to_string();
                let d = KafkaDelivery::ExactlyOnce {
                    transactional_id_prefix: prefix,
                };
                ("out-exactly-once", d)
            } else {
                ("out-at-least-once", KafkaDelivery::AtLeastOnce)
            };
            let config = KafkaConfig::new(bootstrap);
            let sink = KafkaSink::new(config, topic, delivery, KafkaCodec::MessagePack)?
                .with_key(|(k, _): &(u64, u64)| k.to_le_bytes().to_vec());
            counts.sink("sink", sink);
            Some(topic)
        }
    };
    let started = Instant::now();
    let report = job.build()?.run()?;
    let secs = started.elapsed().as_secs_f64();
    let got = match topic {
        None => seen.load(Ordering::Relaxed),
        Some(t) => read_committed_count(bootstrap, t)?,
    };
    Ok((secs, report.checkpoints_completed, got))
}

/// How many records a read_committed consumer sees in the 2 partitions of `topic`, plus the
/// records the mock dropped from their starts (it keeps a bounded number of segments per
/// partition, and its offsets are dense: the start offset counts what went).
fn read_committed_count(bootstrap: &str, topic: &str) -> Result<u64> {
    let err = |e: rdkafka::error::KafkaError| Error::Config(format!("consumer: {e}"));
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-rate-check")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(err)?;
    }
    c.assign(&tpl).map_err(err)?;
    let mut dropped = 0;
    for p in 0..2 {
        let (low, _) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(err)?;
        if low > 0 {
            println!("the mock dropped offsets below {low} of {topic} partition {p}");
            dropped += low as u64;
        }
    }
    let (mut n, mut ended) = (dropped, 0);
    while ended < 2 {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => n += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => return Err(err(e)),
            None => return Err(Error::Config(format!("{topic}: no end in 10 s"))),
        }
    }
    Ok(n)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let mock = MockCluster::new(1).map_err(|e| Error::Config(format!("mock cluster: {e}")))?;
    for topic in ["rate", "out-exactly-once", "out-at-least-once"] {
        mock.create_topic(topic, 2, 1)
            .map_err(|e| Error::Config(format!("topic: {e}")))?;
    }
    let bootstrap = mock.bootstrap_servers();
    produce(&bootstrap, "rate", n)?;

    let log = Arc::new(KafkaLog::open(KafkaConfig::new(&bootstrap), "rate")?);
    // The mock keeps a bounded number of segments per partition: what it still has is what
    // the job can read.
    let mut retained = 0;
    for p in 0..2 {
        let p = snapflow::log::PartitionId(p);
        use snapflow::log::ReplayableLog;
        let (start, end) = (log.start_offset(p)?, log.end_offset(p)?);
        retained += end.0 - start.0;
        if start.0 > 0 {
            println!("the mock dropped offsets below {start} of partition {p}");
        }
    }
    let mut failed = false;
    for (name, out) in [
        ("source", Out::Counted),
        ("sink-exactly-once", Out::Sink(true)),
        ("sink-at-least-once", Out::Sink(false)),
    ] {
        let (secs, checkpoints, got) = run(&log, &bootstrap, out, n)?;
        println!(
            "kafka-{name} p=2 N={retained} wall_s={secs:.2} records_per_s={:.0} checkpoints={checkpoints}",
            retained as f64 / secs,
        );
        if got != retained {
            println!("FAILED: {got} count updates out of {name}, expected {retained}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
    println!("OK");
    Ok(())
}
