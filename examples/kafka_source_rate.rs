//! Records per second through a Kafka source at p = 2, on librdkafka's in-process mock
//! cluster: N MessagePack records `(key, i)` are produced into a 2-partition topic first (not
//! timed), then a bounded job reads them (`KafkaLog` source, decode, key_by, count per key,
//! checkpoints every 1 s) and the time from start to end is measured. The number of count
//! updates must equal the number of records the mock kept.
//!
//! Run: `cargo run --release --features kafka --example kafka_source_rate [-- --n N]`
//! (default 400,000: the mock keeps a bounded number of segments per partition, and a larger N
//! loses its oldest records there; the check counts what the mock kept). Prints `kafka-source p=2 N=... records_per_s=...` and `OK`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use snapflow::checkpoint::CheckpointTiming;
use snapflow::kafka::{KafkaCodec, KafkaConfig, KafkaLog, KafkaRecord};
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let mock = MockCluster::new(1).map_err(|e| Error::Config(format!("mock cluster: {e}")))?;
    mock.create_topic("rate", 2, 1)
        .map_err(|e| Error::Config(format!("topic: {e}")))?;
    produce(&mock.bootstrap_servers(), "rate", n)?;

    let log = Arc::new(KafkaLog::open(
        KafkaConfig::new(mock.bootstrap_servers()),
        "rate",
    )?);
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
    let seen = Arc::new(AtomicU64::new(0));
    let config = JobConfig {
        parallelism: 2,
        checkpoints: CheckpointTiming::every(Duration::from_secs(1)),
        ..JobConfig::default()
    };
    let job = JobBuilder::with_config("kafka-rate", config);
    job.checkpoint_in_memory();
    let counted = Arc::clone(&seen);
    job.source(
        "kafka",
        log.source::<(u64, u64)>(KafkaCodec::MessagePack).bounded(),
    )
    .map("value", |r: KafkaRecord<(u64, u64)>| (r.value.0, 1u64))
    .key_by(|(k, _): &(u64, u64)| *k)
    .reduce("count", |a, b| (a.0, a.1 + b.1))
    .filter("last", move |(_, c): &(u64, u64)| {
        counted.fetch_add(1, Ordering::Relaxed);
        *c == n / KEYS
    })
    .sink("sink", snapflow::sink::CollectSink::new());
    let started = Instant::now();
    let report = job.build()?.run()?;
    let secs = started.elapsed().as_secs_f64();
    let got = seen.load(Ordering::Relaxed);
    println!(
        "kafka-source p=2 N={retained} wall_s={secs:.2} records_per_s={:.0} checkpoints={}",
        retained as f64 / secs,
        report.checkpoints_completed
    );
    if got != retained {
        println!("FAILED: {got} counted updates, expected {retained}");
        std::process::exit(1);
    }
    println!("OK");
    Ok(())
}
