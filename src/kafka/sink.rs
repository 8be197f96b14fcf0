//! [`KafkaSink`]: a job's output into a Kafka topic, exactly once through Kafka transactions
//! driven by the job's two-phase commit, or at least once through an idempotent producer.
//!
//! **Exactly once** ([`KafkaDelivery::ExactlyOnce`]): each sink task has a stable
//! transactional id, `<prefix>-<vertex uid>-<task index>`.
//! - An epoch's records are encoded and kept; at the barrier they become the epoch's
//!   pre-committed transaction ([`KafkaTxn`]), stored in the task's snapshot: the checkpoint is
//!   the write-ahead log of the output.
//! - When the checkpoint completes, the epoch goes to Kafka in one transaction together with
//!   its **marker** (the epoch, as the offset of a consumer group named like the transactional
//!   id; see [`KafkaProducer`]): its records and the marker become visible together or not at
//!   all. An epoch at or below the marker was committed already and is skipped, so commits are
//!   idempotent, even when a commit's reply was lost.
//! - A task that opens calls `init_transactions`, which fences every earlier producer of its
//!   id and aborts the transaction it left open. After a restore it commits, in epoch order,
//!   every restored pre-committed epoch above the marker; epochs after the checkpoint were
//!   never committed and are produced again by the replay. After a rescale, a task also
//!   recovers the transactions of the removed tasks whose index maps to it (every checkpoint
//!   holds each task's latest epoch): it fences their ids, so no zombie of a removed task can
//!   commit, and commits what they pre-committed.
//!
//! Why the records wait in the checkpoint rather than in an open Kafka transaction (as
//! Flink's Java sink does): a pre-committed transaction must be committable by whoever
//! restores the checkpoint, and librdkafka cannot resume a transaction another producer
//! opened (Java's client is driven into it by reflection); a producer that starts with the
//! same id aborts it. With the records in the checkpoint, nothing pre-committed depends on
//! a producer staying alive, and a broker that times a transaction out loses nothing: the
//! next attempt commits the epoch again. A Kafka transaction stays open only while one epoch
//! is being committed, so `transaction.timeout.ms` must cover one commit (validated).
//!
//! Consumers that read with `isolation.level=read_committed` see every output record once.
//!
//! **At least once** ([`KafkaDelivery::AtLeastOnce`]): records are sent as they arrive by an
//! idempotent producer (no duplicates from the client's own retries); the barrier waits until
//! every record before it is acknowledged. A restore sends the records since the checkpoint
//! again.
//!
//! ```no_run
//! use snapflow::kafka::{KafkaCodec, KafkaConfig, KafkaDelivery, KafkaSink};
//! # fn main() -> snapflow::Result<()> {
//! let counts = KafkaSink::<(String, u64)>::new(
//!     KafkaConfig::new("localhost:9092"),
//!     "word-counts",
//!     KafkaDelivery::ExactlyOnce {
//!         transactional_id_prefix: "wordcount".into(),
//!     },
//!     KafkaCodec::Json,
//! )?
//! .with_key(|(word, _)| word.as_bytes().to_vec());
//! // stream.sink("counts", counts);
//! # let _ = counts;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::producer::{rdkafka_producer, KafkaOut, KafkaProducer, ProducerFactory, ProducerSpec};
use super::{KafkaCodec, KafkaConfig};
use crate::checkpoint::CheckpointId;
use crate::error::{Error, ErrorClass, Result};
use crate::ids::TaskInfo;
use crate::sink::{Guarantee, TwoPhaseCommitSink};

/// The largest `transaction.timeout.ms` the sink accepts: brokers' default
/// `transaction.max.timeout.ms` (15 minutes), above which they refuse to register a producer.
pub const MAX_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The sink's default `transaction.timeout.ms` (Kafka's default too).
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Which guarantee a [`KafkaSink`] gives, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// Kafka transactions driven by the job's checkpoints (see the module documentation).
    /// The prefix names the job's producers for good: two jobs (or processes running the
    /// same share of a job) must never share it; restarts of one job must keep it.
    ExactlyOnce {
        /// The start of each sink task's transactional id.
        transactional_id_prefix: String,
    },
    /// An idempotent producer sending records as they arrive; a restore repeats output.
    AtLeastOnce,
}

/// A pre-committed epoch of one exactly-once [`KafkaSink`] task: its records, stored in the
/// checkpoint until they are committed to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaTxn {
    /// The transactional id of the task that wrote it (empty for at-least-once).
    pub transactional_id: String,
    /// The epoch (the checkpoint whose barrier ended it).
    pub epoch: u64,
    /// Its records, in the order they were written.
    pub records: Vec<KafkaOut>,
}

type ValueEncoder<T> = Arc<dyn Fn(&T, &mut Vec<u8>) -> Result<()> + Send + Sync>;
type KeyOf<T> = Arc<dyn Fn(&T) -> Vec<u8> + Send + Sync>;
type PartitionOf<T> = Arc<dyn Fn(&T) -> u32 + Send + Sync>;

/// What one sink task has open.
struct Run {
    /// The task's transactional id (exactly-once only).
    id: Option<String>,
    producer: Box<dyn KafkaProducer>,
    /// The open epoch's records (exactly-once).
    open: Vec<KafkaOut>,
    /// The last epoch committed under `id`, as its marker says.
    committed: Option<u64>,
    /// Whether `begin` ran (the first one checks the epoch against the marker).
    begun: bool,
}

/// Writes a job's records into a Kafka topic; see the module documentation. One value per
/// record (encoded by a [`KafkaCodec`] or an encoder of the user's), with an optional key and
/// an optional explicit partition.
pub struct KafkaSink<T> {
    spec: ProducerSpec,
    delivery: KafkaDelivery,
    value: ValueEncoder<T>,
    key: Option<KeyOf<T>>,
    partition: Option<PartitionOf<T>>,
    factory: ProducerFactory,
    run: Option<Run>,
}

impl<T> std::fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.spec.topic)
            .field("delivery", &self.delivery)
            .field("transaction_timeout", &self.spec.transaction_timeout)
            .finish()
    }
}

impl<T> Clone for KafkaSink<T> {
    /// A fresh sink of the same configuration (nothing open).
    fn clone(&self) -> Self {
        KafkaSink {
            spec: self.spec.clone(),
            delivery: self.delivery.clone(),
            value: Arc::clone(&self.value),
            key: self.key.clone(),
            partition: self.partition.clone(),
            factory: Arc::clone(&self.factory),
            run: None,
        }
    }
}

impl<T: Serialize> KafkaSink<T> {
    /// A sink into `topic` whose values `codec` encodes, without keys (the producer spreads
    /// records over the partitions). Fails on an invalid configuration: a transaction timeout
    /// in `config`'s properties that is not a number or cannot cover a commit (see
    /// [`KafkaSink::with_transaction_timeout`]), or an empty prefix.
    pub fn new(
        config: KafkaConfig,
        topic: &str,
        delivery: KafkaDelivery,
        codec: KafkaCodec,
    ) -> Result<KafkaSink<T>> {
        KafkaSink::with_encoder(config, topic, delivery, move |r: &T, out: &mut Vec<u8>| {
            codec.encode(r, out)
        })
    }
}

impl<T> KafkaSink<T> {
    /// A sink whose values `encode` writes (appending a record's bytes to the buffer it is
    /// given): raw bytes, or any format. Fails as [`KafkaSink::new`] does.
    pub fn with_encoder(
        config: KafkaConfig,
        topic: &str,
        delivery: KafkaDelivery,
        encode: impl Fn(&T, &mut Vec<u8>) -> Result<()> + Send + Sync + 'static,
    ) -> Result<KafkaSink<T>> {
        if let KafkaDelivery::ExactlyOnce {
            transactional_id_prefix,
        } = &delivery
        {
            if transactional_id_prefix.is_empty() {
                return Err(Error::Config(
                    "a Kafka sink's transactional id prefix is empty".into(),
                ));
            }
        }
        let spec = ProducerSpec {
            config,
            topic: topic.to_string(),
            transactional_id: None,
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
        };
        let mut sink = KafkaSink {
            spec,
            delivery,
            value: Arc::new(encode),
            key: None,
            partition: None,
            factory: rdkafka_producer(),
            run: None,
        };
        if let Some(ms) = sink.spec.config.properties.get("transaction.timeout.ms") {
            let ms: u64 = ms.parse().map_err(|_| {
                Error::Config(format!(
                    "transaction.timeout.ms = {ms:?} in the Kafka sink's properties is not a \
                     number of milliseconds"
                ))
            })?;
            sink.spec.transaction_timeout = Duration::from_millis(ms);
        }
        sink.validate()?;
        Ok(sink)
    }

    /// Gives each record the key `key` computes (the producer's partitioner then picks the
    /// partition by key, unless [`KafkaSink::with_partition`] picks it).
    pub fn with_key(mut self, key: impl Fn(&T) -> Vec<u8> + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Sends each record to the partition `partition` computes (it must exist).
    pub fn with_partition(mut self, partition: impl Fn(&T) -> u32 + Send + Sync + 'static) -> Self {
        self.partition = Some(Arc::new(partition));
        self
    }

    /// Sets `transaction.timeout.ms`: how long the broker lets a transaction stay open before
    /// it aborts it. The sink keeps one open while it commits an epoch, which sends the
    /// records, the marker and the commit, each waiting up to the configuration's
    /// `request_timeout`: the timeout must be at least 3 request timeouts (else a slow commit
    /// is aborted under it, and retried forever), and at most [`MAX_TRANSACTION_TIMEOUT`].
    pub fn with_transaction_timeout(mut self, timeout: Duration) -> Result<Self> {
        self.spec.transaction_timeout = timeout;
        self.spec.config.properties.remove("transaction.timeout.ms");
        self.validate()?;
        Ok(self)
    }

    /// Creates the sink's producers with `factory` instead of librdkafka's (another
    /// implementation of the same protocol; the tests use a model of a broker).
    pub fn with_producer(mut self, factory: ProducerFactory) -> Self {
        self.factory = factory;
        self
    }

    /// The transactional id of task `index` of vertex `vertex` under `prefix`.
    pub fn transactional_id(prefix: &str, vertex: &str, index: u32) -> String {
        format!("{prefix}-{vertex}-{index}")
    }

    fn validate(&self) -> Result<()> {
        let timeout = self.spec.transaction_timeout;
        let least = self.spec.config.request_timeout * 3;
        if timeout > MAX_TRANSACTION_TIMEOUT {
            return Err(Error::Config(format!(
                "transaction.timeout.ms = {} exceeds {} ms, brokers' default \
                 transaction.max.timeout.ms: they would refuse to register the producer",
                timeout.as_millis(),
                MAX_TRANSACTION_TIMEOUT.as_millis()
            )));
        }
        if matches!(self.delivery, KafkaDelivery::ExactlyOnce { .. }) && timeout < least {
            return Err(Error::Config(format!(
                "transaction.timeout.ms = {} is below 3 request timeouts ({} ms): a commit \
                 (records, marker, commit, each waiting up to the request timeout) could \
                 outlast its transaction, which the broker then aborts",
                timeout.as_millis(),
                least.as_millis()
            )));
        }
        Ok(())
    }

    fn spec_for(&self, id: Option<String>) -> ProducerSpec {
        ProducerSpec {
            transactional_id: id,
            ..self.spec.clone()
        }
    }

    fn run(&mut self) -> Result<&mut Run> {
        self.run
            .as_mut()
            .ok_or_else(|| Error::Config("a Kafka sink was used before it was opened".to_string()))
    }

    /// A transactional producer for `id`, registered (which fences earlier ones), and its
    /// marker.
    fn register(&self, id: &str) -> Result<(Box<dyn KafkaProducer>, Option<u64>)> {
        let mut producer = (self.factory)(&self.spec_for(Some(id.to_string())))?;
        producer.init_transactions()?;
        let committed = producer.committed_epoch()?;
        Ok((producer, committed))
    }
}

/// Commits `txn` with `producer` unless its marker says it was (or it is empty).
fn commit_txn(
    producer: &mut dyn KafkaProducer,
    committed: &mut Option<u64>,
    txn: &KafkaTxn,
) -> Result<()> {
    if txn.records.is_empty() || committed.is_some_and(|c| txn.epoch <= c) {
        return Ok(());
    }
    producer.begin_transaction()?;
    let sent = txn
        .records
        .iter()
        .enumerate()
        .try_for_each(|(seq, r)| producer.send(r, Some((txn.epoch, seq as u64))))
        .and_then(|()| producer.commit_transaction(txn.epoch));
    if let Err(e) = sent {
        if e.class() != ErrorClass::Fatal {
            if let Err(abort) = producer.abort_transaction() {
                tracing::debug!(error = %abort, "aborting a failed Kafka commit failed too");
            }
        }
        return Err(e);
    }
    *committed = Some(txn.epoch);
    Ok(())
}

impl<T: Send + 'static> TwoPhaseCommitSink<T> for KafkaSink<T> {
    type Txn = KafkaTxn;

    fn open(&mut self, task: &TaskInfo) -> Result<()> {
        let run = match &self.delivery {
            KafkaDelivery::ExactlyOnce {
                transactional_id_prefix,
            } => {
                let id = Self::transactional_id(
                    transactional_id_prefix,
                    &task.task.vertex,
                    task.task.index,
                );
                let (producer, committed) = self.register(&id)?;
                Run {
                    id: Some(id),
                    producer,
                    open: Vec::new(),
                    committed,
                    begun: false,
                }
            }
            KafkaDelivery::AtLeastOnce => Run {
                id: None,
                producer: (self.factory)(&self.spec_for(None))?,
                open: Vec::new(),
                committed: None,
                begun: false,
            },
        };
        self.run = Some(run);
        Ok(())
    }

    fn begin(&mut self, epoch: CheckpointId) -> Result<()> {
        let run = self.run()?;
        if !run.begun {
            run.begun = true;
            if let (Some(id), Some(c)) = (&run.id, run.committed) {
                if c >= epoch.0 {
                    return Err(Error::Config(format!(
                        "transactional id {id:?} has committed epoch {c} to Kafka, at or above \
                         this run's first epoch {}: the job's checkpoints start below what an \
                         earlier run committed (a new checkpoint storage?), so its commits \
                         would be taken as done; restore from that run's checkpoints or use a \
                         new transactional id prefix",
                        epoch.0
                    )));
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, record: T) -> Result<()> {
        let mut value = Vec::new();
        (self.value)(&record, &mut value)?;
        let out = KafkaOut {
            partition: self.partition.as_ref().map(|p| p(&record)),
            key: self.key.as_ref().map(|k| k(&record)),
            value,
        };
        let run = self.run()?;
        if run.id.is_some() {
            run.open.push(out);
            Ok(())
        } else {
            run.producer.send(&out, None)
        }
    }

    fn pre_commit(&mut self, epoch: CheckpointId) -> Result<KafkaTxn> {
        let run = self.run()?;
        match &run.id {
            Some(id) => Ok(KafkaTxn {
                transactional_id: id.clone(),
                epoch: epoch.0,
                records: std::mem::take(&mut run.open),
            }),
            None => {
                run.producer.flush()?;
                Ok(KafkaTxn {
                    transactional_id: String::new(),
                    epoch: epoch.0,
                    records: Vec::new(),
                })
            }
        }
    }

    fn commit(&mut self, txn: &KafkaTxn) -> Result<()> {
        let run = self.run()?;
        if run.id.is_none() {
            return Ok(());
        }
        commit_txn(run.producer.as_mut(), &mut run.committed, txn)
    }

    fn recover(&mut self, committed: &[KafkaTxn]) -> Result<()> {
        let own = match &self.run()?.id {
            Some(id) => id.clone(),
            None => return Ok(()),
        };
        let mut by_id: BTreeMap<&str, Vec<&KafkaTxn>> = BTreeMap::new();
        for t in committed {
            by_id.entry(&t.transactional_id).or_default().push(t);
        }
        for (id, mut txns) in by_id {
            txns.sort_by_key(|t| t.epoch);
            if id == own {
                let run = self.run()?;
                for t in txns {
                    commit_txn(run.producer.as_mut(), &mut run.committed, t)?;
                }
            } else {
                // A task of another parallelism: fence its id and finish its epochs.
                let (mut producer, mut marker) = self.register(id)?;
                for t in txns {
                    commit_txn(producer.as_mut(), &mut marker, t)?;
                }
                tracing::info!(transactional_id = id, by = %own, "recovered the transactions of a sink task that no longer exists");
            }
        }
        Ok(())
    }

    fn guarantee(&self) -> Guarantee {
        match self.delivery {
            KafkaDelivery::ExactlyOnce { .. } => Guarantee::ExactlyOnce,
            KafkaDelivery::AtLeastOnce => Guarantee::AtLeastOnce,
        }
    }
}
