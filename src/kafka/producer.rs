//! The Kafka producer API a [`KafkaSink`](super::KafkaSink) drives ([`KafkaProducer`]), and
//! its implementation on librdkafka ([`rdkafka_producer`]).
//!
//! The trait is the part of Kafka's transaction protocol the sink relies on, so that the sink
//! can be tested against a model of it where no broker with transactions is at hand (the
//! mock cluster runs the protocol but neither hides aborted records nor fences producers nor
//! commits offsets sent to a transaction; `tests/kafka.rs` records that):
//! - `init_transactions` makes a producer the only live one of its transactional id: every
//!   earlier producer of the id is fenced (its further calls fail) and the transaction it left
//!   open is aborted;
//! - the records of a transaction and its **marker** (a consumer-group offset: the group named
//!   like the transactional id, on partition 0 of the sink's topic, set to an epoch) become
//!   visible together, or not at all;
//! - `committed_epoch` reads the marker back, so a new producer knows which epochs an earlier
//!   one committed, even one whose commit reply was lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::log::remote;
use super::KafkaConfig;
use crate::error::{Error, ErrorClass, Result};

/// One record for a Kafka topic, encoded: the partition it goes to (else the producer's
/// partitioner picks one by key), its key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaOut {
    /// The partition, when the sink chose one.
    pub partition: Option<u32>,
    /// The key, when the record has one.
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What a producer is created for: its cluster, the topic its records (and markers) go to, and
/// for a transactional producer its id and transaction timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSpec {
    /// The cluster.
    pub config: KafkaConfig,
    /// The topic written to; its partition 0 holds the markers.
    pub topic: String,
    /// The transactional id (`None`: an idempotent producer without transactions).
    pub transactional_id: Option<String>,
    /// `transaction.timeout.ms`.
    pub transaction_timeout: Duration,
}

/// The producer calls a [`KafkaSink`](super::KafkaSink) makes; see the module documentation
/// for the guarantees an implementation must give. Errors carry their class: a fenced
/// producer's are Fatal (another producer of its transactional id is live).
pub trait KafkaProducer: Send {
    /// Registers the transactional id: fences every earlier producer of it and aborts the
    /// transaction it left open.
    fn init_transactions(&mut self) -> Result<()>;
    /// Opens a transaction.
    fn begin_transaction(&mut self) -> Result<()>;
    /// Queues a record (into the open transaction, if there is one). `at` is the record's
    /// place in its epoch, `(epoch, seq)`, for a transactional producer: it goes into the
    /// record's headers with the transactional id ([`KafkaOrigin`](super::KafkaOrigin)), so
    /// that readers can tell a replayed copy from a new record.
    fn send(&mut self, record: &KafkaOut, at: Option<(u64, u64)>) -> Result<()>;
    /// Waits until every queued record is acknowledged; an error if any was not.
    fn flush(&mut self) -> Result<()>;
    /// Commits the open transaction with the marker `epoch`, atomically.
    fn commit_transaction(&mut self, epoch: u64) -> Result<()>;
    /// Aborts the open transaction.
    fn abort_transaction(&mut self) -> Result<()>;
    /// The epoch of the last committed marker of this producer's transactional id.
    fn committed_epoch(&mut self) -> Result<Option<u64>>;
}

/// Creates the producers of a sink, one per transactional id it acts for.
pub type ProducerFactory =
    Arc<dyn Fn(&ProducerSpec) -> Result<Box<dyn KafkaProducer>> + Send + Sync>;

/// The librdkafka producer factory, a [`KafkaSink`](super::KafkaSink)'s default.
pub fn rdkafka_producer() -> ProducerFactory {
    Arc::new(|spec| Ok(Box::new(RdKafkaProducer::new(spec)?) as Box<dyn KafkaProducer>))
}

/// Counts the records whose delivery failed, which `flush` reports (librdkafka reports them
/// only to a producer's context).
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    last: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka producer error; the client retries");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last.lock() {
                *last = Some(e.to_string());
            }
        }
    }
}

struct RdKafkaProducer {
    producer: BaseProducer<Deliveries>,
    /// A consumer of the marker group, for its metadata and committed offset.
    group: Option<BaseConsumer>,
    spec: ProducerSpec,
    id: String,
}

impl RdKafkaProducer {
    fn new(spec: &ProducerSpec) -> Result<RdKafkaProducer> {
        let timeout_ms = spec.transaction_timeout.as_millis().to_string();
        let mut base = vec![("enable.idempotence", "true"), ("linger.ms", "5")];
        if let Some(id) = &spec.transactional_id {
            base.push(("transactional.id", id));
            base.push(("transaction.timeout.ms", &timeout_ms));
        }
        let id = spec
            .transactional_id
            .clone()
            .unwrap_or_else(|| "(idempotent)".into());
        let producer = spec
            .config
            .client(&base)
            .create_with_context(Deliveries::default())
            .map_err(|e| remote(&format!("creating Kafka producer {id}"), &e))?;
        let group = match &spec.transactional_id {
            Some(tid) => Some(
                spec.config
                    .client(&[("group.id", tid), ("enable.auto.commit", "false")])
                    .create()
                    .map_err(|e| remote(&format!("creating the marker consumer of {tid}"), &e))?,
            ),
            None => None,
        };
        Ok(RdKafkaProducer {
            producer,
            group,
            spec: spec.clone(),
            id,
        })
    }

    fn timeout(&self) -> Duration {
        self.spec.config.request_timeout
    }

    fn fail(&self, what: &str, e: &KafkaError) -> Error {
        let code = match e {
            KafkaError::Transaction(t) => Some(t.code()),
            other => other.rdkafka_error_code(),
        };
        if matches!(
            code,
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ) {
            return fenced(&self.id, &e.to_string());
        }
        let mut err = remote(&format!("{what} of Kafka producer {}", self.id), e);
        if let (Error::Remote { class, .. }, KafkaError::Transaction(_)) = (&mut err, e) {
            // Any other transaction failure leaves a producer that a fresh one (the task's
            // restart) replaces.
            *class = ErrorClass::Retryable;
        }
        err
    }

    fn marker_partition(&self, epoch: Option<u64>) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        match epoch {
            Some(e) => tpl
                .add_partition_offset(&self.spec.topic, 0, Offset::Offset(e as i64))
                .map_err(|e| remote("the marker offset", &e))?,
            None => {
                tpl.add_partition(&self.spec.topic, 0);
            }
        }
        Ok(tpl)
    }

    fn group(&self) -> Result<&BaseConsumer> {
        self.group.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "Kafka producer {} has no transactional id, so no marker",
                self.id
            ))
        })
    }
}

/// The error of a producer whose transactional id another producer took over.
pub(crate) fn fenced(id: &str, reason: &str) -> Error {
    Error::Remote {
        what: format!("Kafka producer of transactional id {id:?}"),
        reason: format!(
            "fenced: a newer producer of the same transactional id is live (two jobs or \
             processes share a transactional id prefix?): {reason}"
        ),
        class: ErrorClass::Fatal,
    }
}

impl KafkaProducer for RdKafkaProducer {
    fn init_transactions(&mut self) -> Result<()> {
        self.producer
            .init_transactions(self.timeout())
            .map_err(|e| self.fail("init_transactions", &e))
    }

    fn begin_transaction(&mut self) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.fail("begin_transaction", &e))
    }

    fn send(&mut self, record: &KafkaOut, at: Option<(u64, u64)>) -> Result<()> {
        let deadline = Instant::now() + self.timeout();
        let position = at.map(|(epoch, seq)| super::origin_position(epoch, seq));
        loop {
            let mut r = BaseRecord::<[u8], [u8]>::to(&self.spec.topic).payload(&record.value);
            if let (Some(id), Some(pos)) = (&self.spec.transactional_id, &position) {
                r = r.headers(
                    OwnedHeaders::new_with_capacity(2)
                        .insert(Header {
                            key: super::ORIGIN_ID_HEADER,
                            value: Some(id.as_bytes()),
                        })
                        .insert(Header {
                            key: super::ORIGIN_POSITION_HEADER,
                            value: Some(&pos[..]),
                        }),
                );
            }
            if let Some(k) = &record.key {
                r = r.key(k.as_slice());
            }
            if let Some(p) = record.partition {
                r = r.partition(p as i32);
            }
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(self.fail("send", &e)),
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.producer
            .flush(self.timeout())
            .map_err(|e| self.fail("flush", &e))?;
        let ctx = self.producer.context();
        let failed = ctx.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = ctx.last.lock().ok().and_then(|l| l.clone());
            return Err(Error::Remote {
                what: format!("delivery by Kafka producer {}", self.id),
                reason: format!(
                    "{failed} record(s) not acknowledged; last error: {}",
                    last.unwrap_or_default()
                ),
                class: ErrorClass::Retryable,
            });
        }
        Ok(())
    }

    fn commit_transaction(&mut self, epoch: u64) -> Result<()> {
        let tpl = self.marker_partition(Some(epoch))?;
        let metadata = self
            .group()?
            .group_metadata()
            .ok_or_else(|| Error::Config(format!("no consumer-group metadata for {}", self.id)))?;
        self.producer
            .send_offsets_to_transaction(&tpl, &metadata, self.timeout())
            .map_err(|e| self.fail("send_offsets_to_transaction", &e))?;
        self.producer
            .commit_transaction(self.timeout())
            .map_err(|e| self.fail("commit_transaction", &e))
    }

    fn abort_transaction(&mut self) -> Result<()> {
        self.producer
            .abort_transaction(self.timeout())
            .map_err(|e| self.fail("abort_transaction", &e))
    }

    fn committed_epoch(&mut self) -> Result<Option<u64>> {
        let tpl = self.marker_partition(None)?;
        let committed = self
            .group()?
            .committed_offsets(tpl, self.timeout())
            .map_err(|e| self.fail("reading the marker", &e))?;
        Ok(committed
            .find_partition(&self.spec.topic, 0)
            .and_then(|p| match p.offset() {
                Offset::Offset(n) if n >= 0 => Some(n as u64),
                _ => None,
            }))
    }
}
