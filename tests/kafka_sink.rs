//! The Kafka sink (issue 15, section 2). The mock cluster runs Kafka's transactional protocol
//! but keeps none of its promises (aborted records stay visible to `read_committed`, producers
//! are not fenced, offsets sent to a transaction are not committed: `tests/kafka.rs` records
//! each), so the exactly-once protocol is tested against a model of the transaction API
//! ([`Model`], below: it hides aborted records, fences, commits markers with their
//! transaction, and fails commits on purpose, before or after applying them). Against the
//! mock: the librdkafka producer's transactions without failures, and the at-least-once
//! idempotent mode under kills.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use snapflow::checkpoint::CheckpointTiming;
use snapflow::checkpoint::MemoryCheckpointStorage;
use snapflow::kafka::{
    DropReplays, KafkaCodec, KafkaConfig, KafkaDelivery, KafkaLog, KafkaOut, KafkaProducer,
    KafkaRecord, KafkaSink, KafkaTxn, ProducerFactory, ProducerSpec,
};
use snapflow::prelude::*;
use snapflow::runtime::TaskInfo;
use snapflow::sink::{CollectSink, TwoPhaseCommitSink};
use snapflow::{CheckpointId, Error, ErrorClass, StartFrom, TaskId};

use common::{chaos_config, counting_log, poll_until, run_to_end, splitmix, Stage};

/// A model broker: what Kafka promises about transactions, and nothing more.
#[derive(Default)]
struct Model {
    st: Mutex<ModelState>,
}

#[derive(Default)]
struct ModelState {
    /// What `read_committed` consumers see: committed transactions' records, in commit order,
    /// and records sent without a transaction.
    visible: Vec<KafkaOut>,
    /// Records of aborted transactions (kept by a broker, shown to nobody).
    aborted: u64,
    ids: HashMap<String, IdState>,
    /// Commit failures: one commit in `fail_one_in` fails (0: none), seeded.
    fail_one_in: u64,
    rng: u64,
    /// Failed commits: before anything was applied, and after (the reply was lost).
    failed_before: u64,
    failed_after: u64,
    commits: u64,
}

#[derive(Default)]
struct IdState {
    /// The producer epoch of the live producer; older ones are fenced.
    generation: u64,
    open: Option<Vec<KafkaOut>>,
    marker: Option<u64>,
}

impl Model {
    fn with_failures(fail_one_in: u64, seed: u64) -> Arc<Model> {
        let m = Model::default();
        {
            let mut st = m.st.lock().expect("model");
            st.fail_one_in = fail_one_in;
            st.rng = seed;
        }
        Arc::new(m)
    }

    fn factory(self: &Arc<Self>) -> ProducerFactory {
        let model = Arc::clone(self);
        Arc::new(move |spec: &ProducerSpec| {
            Ok(Box::new(ModelProducer {
                model: Arc::clone(&model),
                id: spec.transactional_id.clone(),
                generation: 0,
            }) as Box<dyn KafkaProducer>)
        })
    }

    /// A producer of `id`, registered: what a zombie of a task would be.
    fn zombie(self: &Arc<Self>, id: &str) -> ModelProducer {
        let mut p = ModelProducer {
            model: Arc::clone(self),
            id: Some(id.to_string()),
            generation: 0,
        };
        p.init_transactions().expect("init");
        p
    }

    fn visible(&self) -> Vec<KafkaOut> {
        self.st.lock().expect("model").visible.clone()
    }
}

struct ModelProducer {
    model: Arc<Model>,
    id: Option<String>,
    generation: u64,
}

fn refused(what: &str) -> Error {
    Error::Remote {
        what: "model producer".into(),
        reason: what.into(),
        class: ErrorClass::Retryable,
    }
}

impl ModelProducer {
    /// The id's state, or the fenced error when a newer producer registered it.
    fn live<'a>(&self, st: &'a mut ModelState) -> snapflow::Result<&'a mut IdState> {
        let id = self
            .id
            .as_ref()
            .ok_or_else(|| refused("no transactional id"))?;
        let s = st.ids.entry(id.clone()).or_default();
        if s.generation != self.generation {
            return Err(Error::Remote {
                what: format!("model producer {id}"),
                reason: "fenced".into(),
                class: ErrorClass::Fatal,
            });
        }
        Ok(s)
    }
}

impl KafkaProducer for ModelProducer {
    fn init_transactions(&mut self) -> snapflow::Result<()> {
        let mut st = self.model.st.lock().expect("model");
        let id = self
            .id
            .clone()
            .ok_or_else(|| refused("no transactional id"))?;
        let s = st.ids.entry(id).or_default();
        s.generation += 1;
        self.generation = s.generation;
        let left = s.open.take().map_or(0, |o| o.len() as u64);
        st.aborted += left;
        Ok(())
    }

    fn begin_transaction(&mut self) -> snapflow::Result<()> {
        let mut st = self.model.st.lock().expect("model");
        let s = self.live(&mut st)?;
        if s.open.is_some() {
            return Err(refused("a transaction is open already"));
        }
        s.open = Some(Vec::new());
        Ok(())
    }

    fn send(&mut self, record: &KafkaOut, _at: Option<(u64, u64)>) -> snapflow::Result<()> {
        let mut st = self.model.st.lock().expect("model");
        if self.id.is_none() {
            st.visible.push(record.clone());
            return Ok(());
        }
        let s = self.live(&mut st)?;
        s.open
            .as_mut()
            .ok_or_else(|| refused("no open transaction"))?
            .push(record.clone());
        Ok(())
    }

    fn flush(&mut self) -> snapflow::Result<()> {
        Ok(())
    }

    fn commit_transaction(&mut self, epoch: u64) -> snapflow::Result<()> {
        let mut guard = self.model.st.lock().expect("model");
        let st = &mut *guard;
        let roll = (st.fail_one_in > 0).then(|| splitmix(&mut st.rng) % (2 * st.fail_one_in));
        if roll == Some(0) {
            st.failed_before += 1;
            return Err(refused("commit failed before it was applied"));
        }
        let s = self.live(st)?;
        let records = s
            .open
            .take()
            .ok_or_else(|| refused("no open transaction"))?;
        s.marker = Some(epoch);
        st.visible.extend(records);
        st.commits += 1;
        if roll == Some(1) {
            st.failed_after += 1;
            return Err(refused("commit applied, but its reply was lost"));
        }
        Ok(())
    }

    fn abort_transaction(&mut self) -> snapflow::Result<()> {
        let mut st = self.model.st.lock().expect("model");
        let s = self.live(&mut st)?;
        let n = s.open.take().map_or(0, |o| o.len() as u64);
        st.aborted += n;
        Ok(())
    }

    fn committed_epoch(&mut self) -> snapflow::Result<Option<u64>> {
        let mut st = self.model.st.lock().expect("model");
        let id = self
            .id
            .clone()
            .ok_or_else(|| refused("no transactional id"))?;
        Ok(st.ids.entry(id).or_default().marker)
    }
}

/// (records, lost, duplicated) of a keyed count's output.
fn exactness(out: &[(u64, u64)], n: u64, keys: u64) -> (u64, u64, u64) {
    common::exactness(out.iter().copied(), n, keys)
}

fn decode(records: &[KafkaOut]) -> Vec<(u64, u64)> {
    records
        .iter()
        .map(|r| rmp_serde::from_slice(&r.value).expect("a (key, count) value"))
        .collect()
}

fn sink(bootstrap: &str, delivery: KafkaDelivery) -> KafkaSink<(u64, u64)> {
    KafkaSink::new(
        KafkaConfig::new(bootstrap),
        "out",
        delivery,
        KafkaCodec::MessagePack,
    )
    .expect("sink")
    .with_key(|(k, _): &(u64, u64)| k.to_le_bytes().to_vec())
}

fn exactly_once(prefix: &str) -> KafkaDelivery {
    KafkaDelivery::ExactlyOnce {
        transactional_id_prefix: prefix.to_string(),
    }
}

/// source -> stage (sleeping 1 ms every `sleep_every` records, so that kills land while
/// the job runs) -> key_by -> running count -> `sink`.
fn count_job(
    name: &str,
    config: JobConfig,
    sleep_every: u64,
    log: Arc<dyn ReplayableLog>,
    sink: KafkaSink<(u64, u64)>,
) -> JobBuilder {
    let job = JobBuilder::with_config(name, config);
    job.checkpoint_in_memory();
    job.source("source", LogSource::<(u64, u64)>::msgpack(log).bounded())
        .process("stage", Stage::new(sleep_every))
        .key_by(|(k, _): &(u64, u64)| *k)
        .reduce("count", |a, b| (a.0, a.1 + b.1))
        .sink("sink", sink);
    job
}

/// The exactly-once sink under 20 seeds of chaos kills (every kind, pre-commit to commit
/// included) while one commit in 8 fails, half of them after the broker applied it: what a
/// `read_committed` consumer sees is every update exactly once.
#[test]
fn the_kafka_sinks_output_read_committed_is_exactly_once_under_20_seeds_of_kills() {
    let (n, keys) = (4_000u64, 16u64);
    let (mut kills, mut before, mut after, mut aborted) = (0, 0, 0, 0);
    for seed in 0..20u64 {
        let model = Model::with_failures(8, seed);
        let name = format!("kafka-sink-{seed}");
        let job = count_job(
            &name,
            chaos_config(Threads::Arbiters(2)),
            25,
            counting_log(n, keys, 2),
            sink("model", exactly_once(&name)).with_producer(model.factory()),
        );
        let report = common::run_under_kills(job, seed, 5, 30);
        let out = decode(&model.visible());
        assert_eq!(
            exactness(&out, n, keys),
            (n, 0, 0),
            "seed {seed}: (records, lost, duplicated); events {:?}",
            report.events
        );
        let st = model.st.lock().expect("model");
        kills += report.kills;
        before += st.failed_before;
        after += st.failed_after;
        aborted += st.aborted;
    }
    assert!(kills >= 20, "only {kills} kills over 20 seeds");
    assert!(
        before >= 5 && after >= 5,
        "failed commits: {before} before and {after} after applying"
    );
    eprintln!(
        "kills {kills}, commits failed before {before} / after {after}, aborted records {aborted}"
    );
}

fn task(index: u32, parallelism: u32) -> TaskInfo {
    TaskInfo {
        task: TaskId {
            vertex: "sink".into(),
            index,
        },
        parallelism,
        max_parallelism: 128,
        restored_from: Some(CheckpointId(7)),
        attempt: 0,
    }
}

fn out(k: u64, c: u64) -> KafkaOut {
    KafkaOut {
        partition: None,
        key: None,
        value: rmp_serde::to_vec(&(k, c)).expect("encode"),
    }
}

/// After a rescale from 3 sink tasks to 2, task 0 recovers what removed task 2 pre-committed:
/// it fences task 2's transactional id (a zombie of it can no longer commit, and the
/// transaction it left open is aborted) and commits its epochs once, even when restored twice.
#[test]
fn after_a_rescale_the_ids_of_removed_sink_tasks_are_fenced_and_their_epochs_committed_once() {
    let model = Model::with_failures(0, 0);
    let gone = KafkaSink::<(u64, u64)>::transactional_id("rescale", "sink", 2);
    let mut zombie = model.zombie(&gone);
    zombie.begin_transaction().expect("begin");
    zombie.send(&out(99, 99), None).expect("send");
    let restored = vec![
        KafkaTxn {
            transactional_id: gone.clone(),
            epoch: 6,
            records: vec![out(2, 1)],
        },
        KafkaTxn {
            transactional_id: gone.clone(),
            epoch: 7,
            records: vec![out(2, 2), out(5, 1)],
        },
    ];
    for _ in 0..2 {
        let mut s = sink("model", exactly_once("rescale")).with_producer(model.factory());
        s.open(&task(0, 2)).expect("open");
        s.recover(&restored).expect("recover");
        s.begin(CheckpointId(8)).expect("begin");
    }
    assert_eq!(decode(&model.visible()), vec![(2, 1), (2, 2), (5, 1)]);
    let err = zombie
        .commit_transaction(7)
        .expect_err("the zombie is fenced");
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    assert_eq!(
        model.st.lock().expect("model").aborted,
        1,
        "its open transaction aborted"
    );
}

/// A whole job through a rescale: 3 sink tasks stop with a savepoint, 2 go on from it, and
/// the output is every update exactly once; the third task's id is fenced by the second run.
#[actix_rt::test]
async fn a_job_rescaled_from_3_sink_tasks_to_2_stays_exactly_once() {
    let (n, keys) = (3_000u64, 12u64);
    let model = Model::with_failures(0, 0);
    let log: Arc<dyn ReplayableLog> = Arc::new(MemoryLog::new(2));
    let typed = TypedLog::<(u64, u64)>::new(Arc::clone(&log));
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(MemoryCheckpointStorage::new("rescale").expect("storage"));
    let run = |parallelism: u32, from: StartFrom, bounded: bool| {
        let job = JobBuilder::with_config(
            "rescale",
            JobConfig {
                parallelism: 2,
                batch_size: 32,
                threads: Threads::Arbiters(2),
                checkpoints: CheckpointTiming::every(Duration::from_millis(15)),
                start_from: from,
                ..JobConfig::default()
            },
        );
        job.checkpoint_storage(Arc::clone(&storage));
        let mut source = LogSource::<(u64, u64)>::msgpack(Arc::clone(&log));
        if bounded {
            source = source.bounded();
        }
        let sink = sink("model", exactly_once("rescale")).with_producer(model.factory());
        job.source("source", source)
            .key_by(|(k, _): &(u64, u64)| *k)
            .reduce("count", |a, b| (a.0, a.1 + b.1))
            .sink("sink", sink)
            .sink_parallelism(parallelism);
        job
    };
    let append = |from: u64, to: u64| {
        for i in from..to {
            typed
                .append(PartitionId((i % 2) as u32), &(i % keys, 1))
                .expect("append");
        }
    };
    append(0, n / 2);
    let handle = run(3, StartFrom::Nothing, false)
        .build()
        .expect("build")
        .start()
        .await
        .expect("start");
    assert!(
        poll_until(Duration::from_secs(30), || model.visible().len() as u64
            >= n / 4)
        .await,
        "the first run commits"
    );
    let sp = handle.stop_with_savepoint().await.expect("savepoint");
    handle.wait().await.expect("stops");
    let gone = KafkaSink::<(u64, u64)>::transactional_id("rescale", "sink", 2);
    let mut zombie = model.zombie(&gone);
    append(n / 2, n);
    let report = run_to_end(run(2, StartFrom::Savepoint(sp.location), true))
        .await
        .expect("second run");
    assert_eq!(
        exactness(&decode(&model.visible()), n, keys),
        (n, 0, 0),
        "(records, lost, duplicated); {:?}",
        report.events
    );
    let err = zombie
        .begin_transaction()
        .expect_err("task 2's id was fenced by the second run");
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
}

/// A producer that another one of its id took over gets a Fatal error: two jobs sharing a
/// prefix cannot both go on.
#[test]
fn a_sink_whose_transactional_id_was_taken_over_fails_fatally() {
    let model = Model::with_failures(0, 0);
    let mut first = sink("model", exactly_once("shared")).with_producer(model.factory());
    first.open(&task(0, 1)).expect("open");
    first.recover(&[]).expect("recover");
    first.begin(CheckpointId(1)).expect("begin");
    first.write((1, 1)).expect("write");
    let txn = first.pre_commit(CheckpointId(1)).expect("pre-commit");
    let mut second = sink("model", exactly_once("shared")).with_producer(model.factory());
    second.open(&task(0, 1)).expect("open");
    let err = first.commit(&txn).expect_err("fenced");
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    assert!(model.visible().is_empty());
}

/// A run whose first epoch is at or below what its transactional ids already committed (its
/// checkpoints start over, in a new storage) is refused before it writes, naming the id:
/// its commits would otherwise be taken as done and lost.
#[test]
fn a_run_starting_below_the_committed_epoch_of_its_transactional_id_is_refused() {
    let model = Model::with_failures(0, 0);
    let mut s = sink("model", exactly_once("again")).with_producer(model.factory());
    s.open(&task(0, 1)).expect("open");
    s.recover(&[]).expect("recover");
    s.begin(CheckpointId(5)).expect("begin");
    s.write((1, 1)).expect("write");
    let txn = s.pre_commit(CheckpointId(5)).expect("pre-commit");
    s.commit(&txn).expect("commit");
    let mut again = sink("model", exactly_once("again")).with_producer(model.factory());
    again.open(&task(0, 1)).expect("open");
    again.recover(&[]).expect("recover");
    let err = again.begin(CheckpointId(3)).expect_err("refused");
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    assert!(err.to_string().contains("again-sink-0"), "{err}");
}

/// transaction.timeout.ms must cover one commit (3 request timeouts) and stay within brokers'
/// default maximum; a non-numeric one in the properties is refused too.
#[test]
fn a_transaction_timeout_that_cannot_cover_a_commit_is_refused() {
    let s = sink("localhost:1", exactly_once("t"));
    for bad in [Duration::from_secs(29), Duration::from_secs(901)] {
        let err = s
            .clone()
            .with_transaction_timeout(bad)
            .expect_err("refused");
        assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
        assert!(err.to_string().contains("transaction.timeout.ms"), "{err}");
    }
    s.clone()
        .with_transaction_timeout(Duration::from_secs(30))
        .expect("3 request timeouts");
    let props = KafkaConfig::new("localhost:1").set("transaction.timeout.ms", "1000");
    let err = KafkaSink::<u64>::new(props, "out", exactly_once("t"), KafkaCodec::Json)
        .expect_err("below 3 request timeouts");
    assert!(err.to_string().contains("1000"), "{err}");
    let props = KafkaConfig::new("localhost:1").set("transaction.timeout.ms", "soon");
    assert!(KafkaSink::<u64>::new(props, "out", exactly_once("t"), KafkaCodec::Json).is_err());
    let empty = KafkaSink::<u64>::new(
        KafkaConfig::new("x:1"),
        "out",
        exactly_once(""),
        KafkaCodec::Json,
    );
    assert!(empty.is_err(), "an empty prefix");
}

/// Every record of `topic` on the mock, as a read_committed consumer sees them.
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Vec<KafkaOut> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "check")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let (mut out, mut eof) = (Vec::new(), 0);
    while eof < partitions {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => out.push(KafkaOut {
                partition: Some(m.partition() as u32),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
            }),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            None => panic!("no end of partition in 10 s"),
            Some(Err(e)) => panic!("consume: {e}"),
        }
    }
    out
}

/// librdkafka's transactional producer against the mock: without failures, the exactly-once
/// sink's transactions put every update into the topic once, keyed.
#[test]
fn the_exactly_once_sink_commits_through_librdkafka_transactions_on_the_mock() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("out", 2, 1).expect("topic");
    let (n, keys) = (3_000u64, 10u64);
    let job = count_job(
        "kafka-sink-mock",
        JobConfig {
            parallelism: 2,
            checkpoints: CheckpointTiming::every(Duration::from_millis(20)),
            ..JobConfig::default()
        },
        u64::MAX,
        counting_log(n, keys, 2),
        sink(&mock.bootstrap_servers(), exactly_once("mock")),
    );
    let report = job.build().expect("build").run().expect("run");
    let records = read_all(&mock.bootstrap_servers(), "out", 2);
    assert_eq!(
        exactness(&decode(&records), n, keys),
        (n, 0, 0),
        "{:?}",
        report.events
    );
    for r in &records {
        let (k, _): (u64, u64) = rmp_serde::from_slice(&r.value).expect("value");
        assert_eq!(r.key.as_deref(), Some(&k.to_le_bytes()[..]), "keyed");
    }
    assert!(report.checkpoints_completed >= 2, "several transactions");
}

/// The at-least-once mode (an idempotent producer) against the mock, under kills: every
/// update reaches the topic, none that was not made.
#[test]
fn the_at_least_once_sink_delivers_every_update_to_the_mock_under_kills() {
    let (n, keys) = (3_000u64, 10u64);
    let mut kills = 0;
    for seed in 0..3u64 {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("out", 2, 1).expect("topic");
        let job = count_job(
            &format!("kafka-alo-{seed}"),
            chaos_config(Threads::Arbiters(2)),
            25,
            counting_log(n, keys, 2),
            sink(&mock.bootstrap_servers(), KafkaDelivery::AtLeastOnce),
        );
        let report = common::run_under_kills(job, seed, 5, 30);
        let (records, lost, _) = exactness(
            &decode(&read_all(&mock.bootstrap_servers(), "out", 2)),
            n,
            keys,
        );
        assert_eq!(lost, 0, "seed {seed}: nothing lost");
        assert!(records >= n, "seed {seed}");
        let out = decode(&read_all(&mock.bootstrap_servers(), "out", 2));
        assert!(
            out.iter()
                .all(|(k, c)| *k < keys && *c >= 1 && *c <= n / keys + 1),
            "seed {seed}: only updates the job made"
        );
        kills += report.kills;
    }
    assert!(kills >= 3, "only {kills} kills");
}

/// The documented fallback where `read_committed` is not honoured (the mock): the
/// exactly-once sink under kills on the mock leaves repeated copies of epochs in the topic
/// (a repeated commit, a commit cut short), each at the positions of the first copy; a job
/// that reads the topic through `DropReplays` (keyed like the writer) gets every update
/// exactly once, while the raw topic holds more.
#[test]
fn repeats_of_the_sinks_epochs_on_the_mock_are_dropped_by_their_origin_by_drop_replays() {
    let (n, keys) = (3_000u64, 10u64);
    let mut repeated = 0;
    for seed in 0..4u64 {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("out", 2, 1).expect("topic");
        let b = mock.bootstrap_servers();
        let name = format!("kafka-replays-{seed}");
        let job = count_job(
            &name,
            chaos_config(Threads::Arbiters(2)),
            4,
            counting_log(n, keys, 2),
            sink(&b, exactly_once(&name)),
        );
        // Kills after the first checkpoints: a restore from one re-commits its epoch.
        common::run_under_kills(job, seed, 80, 200);
        let raw = read_all(&b, "out", 2).len() as u64;
        repeated += raw - n;
        assert_eq!(
            exactness(&read_without_replays(&b), n, keys),
            (n, 0, 0),
            "seed {seed}: (records, lost, duplicated) after DropReplays; the raw topic held {raw}"
        );
    }
    eprintln!("repeated copies dropped over 4 seeds: {repeated}");
}

/// The `(key, count)` values of topic `out`, read by a job through `DropReplays`.
fn read_without_replays(bootstrap: &str) -> Vec<(u64, u64)> {
    let log = Arc::new(KafkaLog::open(KafkaConfig::new(bootstrap), "out").expect("open"));
    let reader = JobBuilder::with_config(
        "read-back",
        JobConfig {
            parallelism: 2,
            ..JobConfig::default()
        },
    );
    reader.checkpoint_in_memory();
    let collected = CollectSink::new();
    reader
        .source(
            "out",
            log.source::<(u64, u64)>(KafkaCodec::MessagePack).bounded(),
        )
        .key_by(|r: &KafkaRecord<(u64, u64)>| r.value.0)
        .process("drop-replays", DropReplays::new())
        .map("value", |r: KafkaRecord<(u64, u64)>| r.value)
        .sink("collect", collected.clone());
    reader.build().expect("build").run().expect("read back");
    collected.records()
}

/// Deterministically: a restore that commits a restored epoch again (the mock keeps no
/// marker) puts a second copy of it into the topic, at the same origins; `DropReplays` takes
/// each update once, and records without an origin pass.
#[test]
fn a_commit_repeated_on_the_mock_is_dropped_by_drop_replays() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("out", 2, 1).expect("topic");
    let b = mock.bootstrap_servers();
    let mut first = sink(&b, exactly_once("repeat"));
    first.open(&task(0, 1)).expect("open");
    first.recover(&[]).expect("recover");
    let mut txns = Vec::new();
    for epoch in 1..=3u64 {
        first.begin(CheckpointId(epoch)).expect("begin");
        for k in 0..4 {
            first.write((k, epoch)).expect("write");
        }
        let txn = first.pre_commit(CheckpointId(epoch)).expect("pre-commit");
        first.commit(&txn).expect("commit");
        txns.push(txn);
    }
    drop(first);
    let mut again = sink(&b, exactly_once("repeat"));
    again.open(&task(0, 1)).expect("open");
    again
        .recover(&txns[1..])
        .expect("recover commits epochs 2 and 3 again");
    let mut plain = sink(&b, KafkaDelivery::AtLeastOnce);
    plain.open(&task(0, 1)).expect("open");
    plain.write((9, 1)).expect("write");
    plain.pre_commit(CheckpointId(1)).expect("flush");
    assert_eq!(
        read_all(&b, "out", 2).len(),
        12 + 8 + 1,
        "the mock shows the repeat"
    );
    let mut got = read_without_replays(&b);
    got.sort_unstable();
    let mut want: Vec<(u64, u64)> = (0..4).flat_map(|k| (1..=3).map(move |e| (k, e))).collect();
    want.push((9, 1));
    want.sort_unstable();
    assert_eq!(got, want);
}
