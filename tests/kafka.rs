//! Kafka as a source log, against librdkafka's in-process mock cluster (`MockCluster`, which
//! speaks the Kafka protocol on a local port): what the mock supports, reading across the
//! gaps that aborted transactions leave, event time from Kafka's timestamps, clear errors for
//! missing offsets and unreachable brokers, and exactly-once replay after kills.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use snapflow::kafka::{KafkaCodec, KafkaConfig, KafkaLog, KafkaRecord};
use snapflow::log::{LogOffset, PartitionId, ReplayableLog};
use snapflow::prelude::*;
use snapflow::{Error, ErrorClass, FileSink};

use common::{chaos_config, check_updates};

const T: Duration = Duration::from_secs(10);

fn producer(bootstrap: &str, transactional_id: Option<&str>) -> BaseProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    if let Some(id) = transactional_id {
        c.set("transactional.id", id);
    }
    let p: BaseProducer = c.create().expect("producer");
    if transactional_id.is_some() {
        p.init_transactions(T).expect("init transactions");
    }
    p
}

fn send(p: &BaseProducer, topic: &str, partition: i32, key: &[u8], value: &[u8], ts: Option<i64>) {
    let mut r = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value);
    if let Some(ts) = ts {
        r = r.timestamp(ts);
    }
    p.send(r).map_err(|(e, _)| e).expect("send");
}

/// Every record of `topic` partition `p` a `read_committed` consumer sees: (offset, value).
fn committed(bootstrap: &str, topic: &str, p: i32) -> Vec<(i64, Vec<u8>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "check")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    loop {
        match c.poll(T) {
            Some(Ok(m)) => out.push((m.offset(), m.payload().unwrap_or_default().to_vec())),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => return out,
            Some(Err(e)) => panic!("consume: {e}"),
        }
    }
}

/// What the mock cluster does with transactions, recorded as a test (the Kafka sink's tests
/// build on it): it runs the whole transactional protocol (init, begin, commit, abort), but it
/// writes no transaction markers (its offsets stay dense) and its `read_committed` fetches do
/// not hide the records of aborted transactions, as a real broker's do. The gaps markers
/// leave are tested with a log that has them (`tests/runtime_sparse_offsets.rs`).
#[test]
fn the_mock_cluster_runs_transactions_but_its_read_committed_still_shows_aborted_records() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("tx", 1, 1).expect("topic");
    let b = mock.bootstrap_servers();
    let p = producer(&b, Some("verify-tx"));
    p.begin_transaction().expect("begin");
    send(&p, "tx", 0, b"k", b"committed-1", None);
    p.commit_transaction(T).expect("commit");
    p.begin_transaction().expect("begin");
    send(&p, "tx", 0, b"k", b"aborted", None);
    p.flush(T).expect("flush");
    p.abort_transaction(T).expect("abort");
    p.begin_transaction().expect("begin");
    send(&p, "tx", 0, b"k", b"committed-2", None);
    p.commit_transaction(T).expect("commit");
    let seen = committed(&b, "tx", 0);
    let values: Vec<&[u8]> = seen.iter().map(|(_, v)| v.as_slice()).collect();
    assert_eq!(
        values,
        vec![&b"committed-1"[..], &b"aborted"[..], &b"committed-2"[..]],
        "if the mock now hides aborted records, test the Kafka sink's aborts against it"
    );
    let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        vec![0, 1, 2],
        "no markers between the transactions' records"
    );
}

/// Two more things the mock cluster does not do, recorded as a test (the Kafka sink's
/// exactly-once protocol is tested against a model because of them, `tests/kafka_sink.rs`):
/// it does not commit the consumer-group offsets sent to a transaction
/// (`send_offsets_to_transaction`), and it does not fence: a producer's commit still succeeds
/// after a newer producer of its transactional id has registered.
#[test]
fn the_mock_cluster_neither_commits_transactional_offsets_nor_fences_producers() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("out", 1, 1).expect("topic");
    let b = mock.bootstrap_servers();
    let group = || -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "marker")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer")
    };
    let marker = || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("out", 0);
        let c = group()
            .committed_offsets(tpl, T)
            .expect("committed offsets");
        c.find_partition("out", 0).expect("partition").offset()
    };
    let old = producer(&b, Some("fence-me"));
    old.begin_transaction().expect("begin");
    send(&old, "out", 0, b"k", b"v", None);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("out", 0, Offset::Offset(5))
        .expect("tpl");
    let metadata = group().group_metadata().expect("group metadata");
    old.send_offsets_to_transaction(&tpl, &metadata, T)
        .expect("send offsets");
    let _new = producer(&b, Some("fence-me"));
    assert!(
        old.commit_transaction(T).is_ok(),
        "if the mock now fences producers, test the Kafka sink's fencing against it"
    );
    assert_eq!(
        marker(),
        Offset::Invalid,
        "if the mock now commits transactional offsets, test the sink's markers against it"
    );
}

/// A topic of `partitions` partitions holding `(key, i)` for i in 0..n (key i % keys, on
/// partition i % partitions) in transactions of 50 records (no aborted ones: the mock would
/// show their records; see the test above).
fn counting_topic(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    n: u64,
    keys: u64,
    partitions: i32,
) {
    mock.create_topic(topic, partitions, 1).expect("topic");
    let p = producer(&mock.bootstrap_servers(), Some(&format!("fill-{topic}")));
    let mut i = 0;
    while i < n {
        p.begin_transaction().expect("begin");
        for _ in 0..50.min(n - i) {
            let value = rmp_serde::to_vec(&(i % keys, i)).expect("encode");
            send(
                &p,
                topic,
                (i % partitions as u64) as i32,
                &(i % keys).to_le_bytes(),
                &value,
                Some(1_000 + i as i64),
            );
            i += 1;
        }
        p.commit_transaction(T).expect("commit");
    }
}

#[test]
fn a_kafka_log_reads_every_record_once_by_offset_with_keys_and_timestamps() {
    let mock = MockCluster::new(1).expect("mock cluster");
    counting_topic(&mock, "gaps", 400, 7, 2);
    let log =
        Arc::new(KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers()), "gaps").expect("open"));
    assert_eq!(log.partitions(), 2);
    let mut values = Vec::new();
    for p in 0..2 {
        let p = PartitionId(p);
        let end = log.end_offset(p).expect("end");
        let mut at = log.start_offset(p).expect("start");
        let deadline = std::time::Instant::now() + T;
        while at < end {
            assert!(
                std::time::Instant::now() < deadline,
                "partition {p} stuck at {at} of {end}"
            );
            let batch = log.read(p, at, 64).expect("read");
            for (o, bytes) in batch.iter() {
                assert!(o >= at, "offsets grow");
                values.push((o, bytes.to_vec()));
            }
            at = batch.next_offset();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(values.len(), 400, "every record once");
    // A restart from a checkpointed offset in the middle reads the same records from there.
    let (o, first) = values[100].clone();
    let again = log.read(PartitionId(0), o, 1).expect("read");
    let deadline = std::time::Instant::now() + T;
    let mut again = again;
    while again.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        again = log.read(PartitionId(0), o, 1).expect("read");
    }
    assert_eq!(
        again.iter().next().map(|(o, b)| (o, b.to_vec())),
        Some((o, first))
    );
    // Decoded as a source decodes it: the key, the timestamp and the offset come along.
    let r: KafkaRecord<(u64, u64)> =
        snapflow::kafka::decode_record(KafkaCodec::MessagePack, &values[3].1).expect("decode");
    assert_eq!(r.offset, values[3].0);
    assert_eq!(r.key.as_deref(), Some(&(r.value.0).to_le_bytes()[..]));
    assert_eq!(r.timestamp_ms, Some(1_000 + r.value.1 as i64));
    assert_eq!(r.event_time(), 1_000 + r.value.1 as i64);
}

#[test]
fn an_offset_the_broker_does_not_have_is_a_clear_error_naming_partition_and_offset() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("short", 1, 1).expect("topic");
    let p = producer(&mock.bootstrap_servers(), None);
    for i in 0..5u8 {
        send(&p, "short", 0, b"k", &[i], None);
    }
    p.flush(T).expect("flush");
    let log = KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers()), "short").expect("open");
    let err = log
        .read(PartitionId(0), LogOffset(50), 10)
        .expect_err("past the end");
    assert!(
        matches!(err, Error::OffsetOutOfRange { partition, offset, end, .. }
            if partition == PartitionId(0) && offset == LogOffset(50) && end == LogOffset(5)),
        "{err}"
    );
    assert!(matches!(
        KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers()), "no-such-topic"),
        Err(Error::Config(_))
    ));
}

#[test]
fn an_unreachable_broker_is_a_retryable_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut config = KafkaConfig::new(format!("127.0.0.1:{port}"));
    config.request_timeout = Duration::from_millis(500);
    let err = KafkaLog::open(config, "t").expect_err("nothing listens");
    assert!(matches!(err, Error::Remote { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Retryable);
    // A broker that goes down under a reader: reads give nothing, then fail as Retryable once
    // the budget is spent.
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("down", 1, 1).expect("topic");
    let log = KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers()), "down")
        .expect("open")
        .with_unreachable_budget(Duration::from_millis(300));
    assert!(log
        .read(PartitionId(0), LogOffset(0), 10)
        .expect("read")
        .is_empty());
    mock.broker_down(1).expect("down");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        match log.read(PartitionId(0), LogOffset(0), 10) {
            Err(e) => break e,
            Ok(b) => assert!(b.is_empty()),
        }
        assert!(std::time::Instant::now() < deadline, "reads never failed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
}

/// A keyed job reading a Kafka topic (with gaps) under chaos kills: every restore seeks the
/// partitions back to the checkpoint's offsets, and the committed output is exact.
#[test]
fn a_kafka_source_replays_exactly_from_checkpointed_offsets_after_kills() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let (n, keys) = (6_000u64, 20u64);
    counting_topic(&mock, "counts", n, keys, 2);
    let mut kills = 0;
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let log = Arc::new(
            KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers()), "counts").expect("open"),
        );
        let name = format!("kafka-chaos-{seed}");
        let job = JobBuilder::with_config(&name, chaos_config(Threads::Arbiters(2)));
        job.checkpoint_in_memory();
        job.source(
            "kafka",
            log.source::<(u64, u64)>(KafkaCodec::MessagePack).bounded(),
        )
        .map("value", |r: KafkaRecord<(u64, u64)>| (r.value.0, 1u64))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("sink", common::count_sink(&out));
        let report = common::run_under_kills(job, seed, 5, 25);
        assert_eq!(
            check_updates(&out, n, keys),
            (n, 0, 0),
            "seed {seed}: {:?}",
            report.events
        );
        kills += report.kills;
    }
    assert!(kills >= 4, "only {kills} kills over 4 seeds");
}

/// Asking a log for its partitions' end offsets between reads (bounded sources, metrics and
/// tools do) does not hold its reads up: every record is read within a few rounds.
#[test]
fn a_kafka_log_asked_for_end_offsets_between_reads_still_reads_every_record() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("ends", 2, 1).expect("topic");
    let b = mock.bootstrap_servers();
    let log = KafkaLog::open(KafkaConfig::new(&b), "ends").expect("open");
    let p = producer(&b, None);
    for i in 0..100 {
        send(&p, "ends", i % 2, b"k", b"v", None);
    }
    p.flush(T).expect("flush");
    let mut pos = [LogOffset(0); 2];
    let mut got = 0;
    let started = std::time::Instant::now();
    while got < 100 && started.elapsed() < Duration::from_secs(20) {
        for q in 0..2u32 {
            let batch = log
                .read(PartitionId(q), pos[q as usize], 4096)
                .expect("read");
            got += batch.len();
            pos[q as usize] = batch.next_offset();
            assert_eq!(log.end_offset(PartitionId(q)).expect("end"), LogOffset(50));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, 100, "read {got} of 100 in {:?}", started.elapsed());
}

#[test]
fn a_kafka_source_decodes_json_values() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("json", 1, 1).expect("topic");
    let p = producer(&mock.bootstrap_servers(), None);
    let mut want = BTreeMap::new();
    for i in 0..30u64 {
        send(
            &p,
            "json",
            0,
            b"k",
            format!("{{\"id\":{i},\"name\":\"n{i}\"}}").as_bytes(),
            None,
        );
        want.insert(i, format!("n{i}"));
    }
    p.flush(T).expect("flush");
    #[derive(serde::Deserialize, Clone)]
    struct Row {
        id: u64,
        name: String,
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let log =
        Arc::new(KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers()), "json").expect("open"));
    let job = JobBuilder::new("kafka-json");
    job.checkpoint_in_memory();
    job.source("kafka", log.source::<Row>(KafkaCodec::Json).bounded())
        .map("row", |r: KafkaRecord<Row>| (r.value.id, r.value.name))
        .sink(
            "sink",
            FileSink::new(&out, |(i, n): &(u64, String), l: &mut String| {
                l.push_str(&format!("{i} {n}"))
            }),
        );
    job.build().expect("build").run().expect("run");
    let mut got = BTreeMap::new();
    for line in FileSink::<(u64, String)>::read_committed(&out).expect("read") {
        let (i, n) = line.split_once(' ').expect("line");
        got.insert(i.parse::<u64>().expect("id"), n.to_string());
    }
    assert_eq!(got, want);
}
