//! [`KafkaLog`]: one Kafka topic as a [`ReplayableLog`], read by offset.
//!
//! Each partition has its own consumer, assigned to that partition alone (no consumer-group
//! membership, no committed offsets) and re-assigned at the offset asked for whenever a read
//! does not continue where the last one ended. Reads never block: they take what the client
//! has fetched in the background (`poll` with a zero timeout), so a source task's actor thread
//! is never held up by the network.
//!
//! **Invariants:** a batch holds records in offset order, each with its own offset, starting
//! at or after the offset asked for; its next offset is the consumer's position, which may lie
//! beyond the last record (markers); records of aborted transactions are never returned
//! (`isolation.level=read_committed`, unless the user's properties say otherwise).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;

use super::share::ProcessShare;
use super::{decode_record, frame, KafkaCodec, KafkaConfig, KafkaRecord};
use crate::error::{Error, ErrorClass, Result};
use crate::log::{
    check_partition, Durability, LogOffset, OffsetRange, PartitionId, RecordBatch, ReplayableLog,
};
use crate::runtime::LogSource;

/// What a read does at an offset the broker no longer has (deleted by retention) or does not
/// have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingOffset {
    /// Fail with [`Error::OffsetOutOfRange`], naming the partition and offset (the default:
    /// records were lost, and nothing may go on as if they were not).
    #[default]
    Fail,
    /// Below the oldest offset the broker has: go on from there, with a warning. (Above its
    /// end is still an error.)
    EarliestAvailable,
}

/// How long a broker may stay unreachable before reads fail (see
/// [`KafkaLog::with_unreachable_budget`]).
pub const DEFAULT_UNREACHABLE_BUDGET: Duration = Duration::from_secs(30);

/// One topic of a Kafka cluster as a replayable, read-only log. See the module documentation.
pub struct KafkaLog {
    config: KafkaConfig,
    topic: String,
    partitions: Vec<Mutex<Reader>>,
    /// The Kafka partition of each of this log's partitions.
    kafka_partitions: Vec<i32>,
    /// The consumer that answers watermark queries (never assigned).
    probe: Mutex<Reader>,
    missing: MissingOffset,
    unreachable_budget: Duration,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions.len())
            .finish()
    }
}

/// The consumer of one partition and where it stands.
#[derive(Default)]
struct Reader {
    consumer: Option<BaseConsumer<Health>>,
    /// The offset the consumer's next record is at or after (where the last read ended).
    position: Option<LogOffset>,
}

/// How often a consumer reports its statistics, which say whether a broker is up.
const STATS_INTERVAL_MS: &str = "200";

/// A consumer's context: when it last saw a broker up (its statistics, served by `poll`), or
/// got a record. An idle partition of a healthy cluster reads nothing and is not failing; a
/// partition whose client has no broker up is.
struct Health {
    born: Instant,
    /// Milliseconds after `born` of the last sign of a broker up.
    up_at_ms: AtomicU64,
}

impl Health {
    fn new() -> Health {
        Health {
            born: Instant::now(),
            up_at_ms: AtomicU64::new(0),
        }
    }

    fn saw_up(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.up_at_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long no broker has been seen up.
    fn down_for(&self) -> Duration {
        let up = Duration::from_millis(self.up_at_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(up)
    }
}

impl ClientContext for Health {
    fn stats(&self, statistics: Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.saw_up();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka client error; the client retries");
    }
}

impl ConsumerContext for Health {}

impl KafkaLog {
    /// The topic `topic` of the cluster `config` names: asks the cluster how many partitions
    /// it has ([`Error::Remote`], Retryable, when it does not answer in
    /// `config.request_timeout`; [`Error::Config`] when the topic does not exist).
    pub fn open(config: KafkaConfig, topic: &str) -> Result<KafkaLog> {
        KafkaLog::open_partitions(config, topic, None)
    }

    /// The share of topic `topic` that process `share` of a job reads: the Kafka partitions
    /// `p` with `p % share.count() == share.index()`, in increasing order, as this log's
    /// partitions 0, 1, ... (records still name their Kafka partition). Fails as
    /// [`KafkaLog::open`] does, and when the share holds no partition.
    pub fn open_share(config: KafkaConfig, topic: &str, share: ProcessShare) -> Result<KafkaLog> {
        KafkaLog::open_partitions(config, topic, Some(share))
    }

    fn open_partitions(
        config: KafkaConfig,
        topic: &str,
        share: Option<ProcessShare>,
    ) -> Result<KafkaLog> {
        let probe = consumer(&config)?;
        let metadata = probe
            .fetch_metadata(Some(topic), config.request_timeout)
            .map_err(|e| remote(&format!("metadata of Kafka topic {topic:?}"), &e))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "Kafka topic {topic:?} does not exist at {}",
                    config.bootstrap_servers
                ))
            })?;
        let kafka_partitions: Vec<i32> = match share {
            None => (0..partitions as u32).map(|p| p as i32).collect(),
            Some(s) => s
                .partitions(partitions as u32)
                .into_iter()
                .map(|p| p as i32)
                .collect(),
        };
        if kafka_partitions.is_empty() {
            return Err(Error::Config(format!(
                "Kafka topic {topic:?} has {partitions} partition(s): none for {share:?}"
            )));
        }
        Ok(KafkaLog {
            config,
            topic: topic.to_string(),
            partitions: kafka_partitions
                .iter()
                .map(|_| Mutex::new(Reader::default()))
                .collect(),
            kafka_partitions,
            probe: Mutex::new(Reader::default()),
            missing: MissingOffset::Fail,
            unreachable_budget: DEFAULT_UNREACHABLE_BUDGET,
        })
    }

    /// What a read at an offset the broker does not have does (default
    /// [`MissingOffset::Fail`]).
    pub fn on_missing_offset(mut self, missing: MissingOffset) -> KafkaLog {
        self.missing = missing;
        self
    }

    /// How long reads give nothing while the broker cannot be reached (the client reconnects
    /// with its own backoff) before they fail with [`Error::Remote`] of class Retryable, which
    /// restarts the source's region with the job's restart strategy. Default
    /// [`DEFAULT_UNREACHABLE_BUDGET`].
    pub fn with_unreachable_budget(mut self, budget: Duration) -> KafkaLog {
        self.unreachable_budget = budget;
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A source reading this topic, its values decoded with `codec`. Unbounded (it follows the
    /// topic); see [`LogSource`] for bounded reading and event time.
    pub fn source<T: DeserializeOwned + Send + 'static>(
        self: &Arc<Self>,
        codec: KafkaCodec,
    ) -> LogSource<KafkaRecord<T>> {
        let log: Arc<dyn ReplayableLog> = self.clone();
        LogSource::with_decoder(log, move |bytes| decode_record(codec, bytes))
    }

    /// A source reading this topic's values as raw bytes.
    pub fn raw_source(self: &Arc<Self>) -> LogSource<KafkaRecord<Vec<u8>>> {
        let log: Arc<dyn ReplayableLog> = self.clone();
        LogSource::with_decoder(log, |bytes| {
            let r = super::unframe(bytes)?;
            let value = r.value.to_vec();
            Ok(r.with_value(value))
        })
    }

    /// The Kafka partition of this log's `partition` (checked by whoever got its reader).
    fn kafka_partition(&self, partition: PartitionId) -> i32 {
        self.kafka_partitions
            .get(partition.0 as usize)
            .copied()
            .unwrap_or(partition.0 as i32)
    }

    /// The Kafka partitions this log reads, in the order of its own partitions.
    pub fn kafka_partitions(&self) -> &[i32] {
        &self.kafka_partitions
    }

    fn reader(&self, partition: PartitionId) -> Result<MutexGuard<'_, Reader>> {
        let i = check_partition(partition, self.partitions.len() as u32)?;
        // A reader is a consumer and two offsets: consistent whatever a panicking holder did.
        Ok(self.partitions[i].lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks a consumer of its own, never a partition's reader: a watermark query on a
    /// consumer that is fetching holds its fetches up (a reader asked between reads never
    /// got a record on the mock cluster, and each query took about half a second).
    fn watermarks(&self, partition: PartitionId) -> Result<(LogOffset, LogOffset)> {
        check_partition(partition, self.partitions.len() as u32)?;
        let mut probe = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        let c = probe.consumer(&self.config)?;
        self.fetch_watermarks(c, partition)
    }

    /// The oldest offset the broker has of `partition`, and its high watermark, asked by `c`.
    fn fetch_watermarks(
        &self,
        c: &BaseConsumer<Health>,
        partition: PartitionId,
    ) -> Result<(LogOffset, LogOffset)> {
        let (low, high) = c
            .fetch_watermarks(
                &self.topic,
                self.kafka_partition(partition),
                self.config.request_timeout,
            )
            .map_err(|e| {
                remote(
                    &format!("offsets of {} partition {partition}", self.topic),
                    &e,
                )
            })?;
        Ok((LogOffset(low.max(0) as u64), LogOffset(high.max(0) as u64)))
    }

    /// Assigns `partition`'s consumer at `from` (checked against the broker's offsets first).
    fn seek(&self, r: &mut Reader, partition: PartitionId, from: LogOffset) -> Result<LogOffset> {
        drop(r.consumer.take());
        let c = r.consumer(&self.config)?;
        let (low, high) = self.fetch_watermarks(c, partition)?;
        let from = match missing_offset(self.missing, partition, from, low, high)? {
            Some(moved) => {
                tracing::warn!(topic = %self.topic, %partition, asked = %from, from = %moved,
                    "the broker no longer has the offset asked for: reading from the earliest it has");
                moved
            }
            None => from,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.topic,
            self.kafka_partition(partition),
            Offset::Offset(from.0 as i64),
        )
        .map_err(|e| remote("assign a Kafka partition", &e))?;
        c.assign(&tpl)
            .map_err(|e| remote("assign a Kafka partition", &e))?;
        r.position = Some(from);
        Ok(from)
    }

    /// Reads what the consumer has fetched, up to `max` records, into `batch`.
    fn take_fetched(&self, r: &mut Reader, batch: &mut RecordBatch, max: usize) -> Result<()> {
        let partition = batch.partition();
        let kafka = PartitionId(self.kafka_partition(partition) as u32);
        let Some(c) = r.consumer.as_ref() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        while batch.len() < max {
            match c.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    buf.clear();
                    let offset = m.offset().max(0) as u64;
                    let (ts, key) = (m.timestamp().to_millis(), m.key());
                    let origin = m.headers().and_then(origin_of);
                    let origin = origin.as_ref().map(|(id, e, s)| (id.as_slice(), *e, *s));
                    frame(
                        &mut buf,
                        kafka,
                        offset,
                        ts,
                        key,
                        origin,
                        m.payload().unwrap_or_default(),
                    );
                    batch.push_at(LogOffset(offset), &buf)?;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    c.context().saw_up();
                    break;
                }
                Some(Err(e)) if offset_missing(&e) => {
                    return Err(Error::OffsetOutOfRange {
                        partition,
                        offset: batch.base_offset(),
                        start: LogOffset(0),
                        end: LogOffset(0),
                    })
                }
                Some(Err(e)) => {
                    tracing::debug!(topic = %self.topic, %partition, error = %e, "Kafka read failed; the client retries");
                    break;
                }
            }
        }
        if !batch.is_empty() {
            c.context().saw_up();
        } else if c.context().down_for() >= self.unreachable_budget {
            return Err(Error::Remote {
                what: format!("read Kafka topic {} partition {partition}", self.topic),
                reason: format!(
                    "no broker of {} reachable for {:?}",
                    self.config.bootstrap_servers,
                    c.context().down_for()
                ),
                class: ErrorClass::Retryable,
            });
        }
        // The consumer's position passes markers after the last record.
        if let Ok(p) = c.position() {
            if let Some(Offset::Offset(o)) = p
                .find_partition(&self.topic, self.kafka_partition(partition))
                .map(|e| e.offset())
            {
                batch.set_next_offset(LogOffset(o.max(0) as u64));
            }
        }
        Ok(())
    }
}

impl Reader {
    fn consumer(&mut self, config: &KafkaConfig) -> Result<&BaseConsumer<Health>> {
        if self.consumer.is_none() {
            self.consumer = Some(consumer(config)?);
        }
        self.consumer
            .as_ref()
            .ok_or_else(|| Error::Internal("a Kafka consumer that was just made is gone".into()))
    }
}

impl ReplayableLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Refused: produce to the topic with a Kafka producer (or the Kafka sink).
    fn append_batch(&self, _partition: PartitionId, _records: &[&[u8]]) -> Result<OffsetRange> {
        Err(Error::Config(format!(
            "KafkaLog of topic {:?} is read-only: produce with a Kafka producer",
            self.topic
        )))
    }

    fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<RecordBatch> {
        let mut r = self.reader(partition)?;
        let from = if r.position == Some(from) && r.consumer.is_some() {
            from
        } else {
            self.seek(&mut r, partition, from)?
        };
        let mut batch = RecordBatch::new(partition, from);
        self.take_fetched(&mut r, &mut batch, max_records.max(1))?;
        r.position = Some(batch.next_offset());
        Ok(batch)
    }

    fn start_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(self.watermarks(partition)?.0)
    }

    /// The partition's high watermark (for a bounded source: what it reads up to).
    fn end_offset(&self, partition: PartitionId) -> Result<LogOffset> {
        Ok(self.watermarks(partition)?.1)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Kafka's retention is the broker's: nothing is trimmed from here.
    fn truncate_before(&self, partition: PartitionId, _offset: LogOffset) -> Result<LogOffset> {
        self.start_offset(partition)
    }

    fn durability(&self) -> Durability {
        Durability::OnAppend
    }
}

/// A consumer for reading assigned partitions: no group membership, no commits, committed
/// records only; a missing offset is an error (`MissingOffset` is applied before assigning).
fn consumer(config: &KafkaConfig) -> Result<BaseConsumer<Health>> {
    let health = Health::new();
    config
        .client(&[
            ("statistics.interval.ms", STATS_INTERVAL_MS),
            ("group.id", "snapflow-source"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "error"),
        ])
        .create_with_context(health)
        .map_err(|e| remote("create a Kafka consumer", &e))
}

/// Whether reading at `from` is possible given the broker's `[low, high]`: `Ok(None)` when it
/// is, `Ok(Some(low))` to read from `low` instead (below it, with
/// [`MissingOffset::EarliestAvailable`]), else the error.
fn missing_offset(
    missing: MissingOffset,
    partition: PartitionId,
    from: LogOffset,
    low: LogOffset,
    high: LogOffset,
) -> Result<Option<LogOffset>> {
    if from >= low && from <= high {
        return Ok(None);
    }
    if from < low && missing == MissingOffset::EarliestAvailable {
        return Ok(Some(low));
    }
    Err(Error::OffsetOutOfRange {
        partition,
        offset: from,
        start: low,
        end: high,
    })
}

/// The origin a [`KafkaSink`](super::KafkaSink) wrote into a record's headers.
fn origin_of(h: &BorrowedHeaders) -> Option<(Vec<u8>, u64, u64)> {
    let (mut id, mut position) = (None, None);
    for header in h.iter() {
        match header.key {
            super::ORIGIN_ID_HEADER => id = header.value,
            super::ORIGIN_POSITION_HEADER => position = header.value,
            _ => {}
        }
    }
    super::parse_origin(id, position)
}

fn offset_missing(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// An [`Error::Remote`] for the failed Kafka call `what`: Fatal for configuration and
/// authorization errors, else Retryable.
pub(crate) fn remote(what: &str, e: &KafkaError) -> Error {
    let fatal = matches!(
        e,
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
    ) || matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::InvalidConfig
        )
    );
    Error::Remote {
        what: what.to_string(),
        reason: e.to_string(),
        class: if fatal {
            ErrorClass::Fatal
        } else {
            ErrorClass::Retryable
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_outside_the_brokers_range_fails_unless_earliest_available_was_chosen() {
        let (p, low, high) = (PartitionId(2), LogOffset(100), LogOffset(200));
        assert_eq!(
            missing_offset(MissingOffset::Fail, p, LogOffset(150), low, high).ok(),
            Some(None)
        );
        assert_eq!(
            missing_offset(MissingOffset::Fail, p, high, low, high).ok(),
            Some(None)
        );
        let err =
            missing_offset(MissingOffset::Fail, p, LogOffset(40), low, high).expect_err("gone");
        assert!(
            matches!(err, Error::OffsetOutOfRange { partition, offset, start, end }
                if partition == p && offset == LogOffset(40) && start == low && end == high),
            "{err}"
        );
        assert_eq!(
            missing_offset(
                MissingOffset::EarliestAvailable,
                p,
                LogOffset(40),
                low,
                high
            )
            .ok(),
            Some(Some(low))
        );
        assert!(missing_offset(
            MissingOffset::EarliestAvailable,
            p,
            LogOffset(201),
            low,
            high
        )
        .is_err());
    }
}
