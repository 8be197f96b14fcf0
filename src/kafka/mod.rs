//! Kafka (feature `kafka`, on `rdkafka`): a topic as a replayable source log ([`KafkaLog`]),
//! and a topic as a sink ([`KafkaSink`]: exactly once through Kafka transactions, or at least
//! once).
//!
//! A Kafka topic's partitions are a source's partitions. Reading positions live in snapflow's
//! checkpoints, never in Kafka's consumer-group offsets: a restore seeks every partition to
//! the offset its checkpoint recorded and replays from there. Kafka offsets are not dense
//! (transaction markers, aborted records and compaction leave gaps): every record carries its
//! own offset ([`RecordBatch::push_at`](crate::log::RecordBatch::push_at)), and a read that
//! only passed markers still moves the source's position on.
//!
//! Records reach the job as [`KafkaRecord`]s: the value decoded by a [`KafkaCodec`]
//! (MessagePack, JSON or raw bytes), with the key, the partition, the offset and Kafka's
//! timestamp, which can be the event time ([`KafkaRecord::event_time`]).
//!
//! Failures: a broker that cannot be reached is retried by the client (with its reconnect
//! backoff) while reads give nothing; past [`KafkaLog::with_unreachable_budget`] the read
//! fails as [`Error::Remote`] of class Retryable. An offset the broker no
//! longer has (retention) is [`Error::OffsetOutOfRange`] with
//! the partition and offset, unless [`MissingOffset::EarliestAvailable`] was chosen.

mod cluster;
mod log;
mod producer;
mod replays;
mod share;
mod sink;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::{LogOffset, PartitionId};
use crate::runtime::time::Timestamp;

pub use cluster::{create_topic, Repartition};
pub use log::{KafkaLog, MissingOffset, DEFAULT_UNREACHABLE_BUDGET};
pub use producer::{rdkafka_producer, KafkaOut, KafkaProducer, ProducerFactory, ProducerSpec};
pub use replays::{DropReplays, REPLAYS_STATE};
pub use share::ProcessShare;
pub use sink::{
    KafkaDelivery, KafkaSink, KafkaTxn, DEFAULT_TRANSACTION_TIMEOUT, MAX_TRANSACTION_TIMEOUT,
};

/// Where a Kafka cluster is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Further client properties (librdkafka's names: `security.protocol`, `sasl.*`, ...),
    /// set after snapflow's own, so they win.
    pub properties: BTreeMap<String, String>,
    /// How long a metadata or offset request may take.
    pub request_timeout: Duration,
}

impl KafkaConfig {
    /// The cluster at `bootstrap_servers`, with no further properties and a 10 s timeout.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Sets a client property.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> KafkaConfig {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The client configuration: `base` (snapflow's settings), then the user's properties.
    pub(crate) fn client(&self, base: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in base {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// How the values of a topic's records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaCodec {
    /// MessagePack (what snapflow's own logs and sinks write).
    MessagePack,
    /// JSON.
    Json,
}

impl KafkaCodec {
    /// Appends `value`'s encoding to `out` (what a [`KafkaSink`] writes as a record's value).
    pub fn encode<T: serde::Serialize + ?Sized>(self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        match self {
            KafkaCodec::MessagePack => crate::codec::encode_into(value, out, "Kafka record value"),
            KafkaCodec::Json => serde_json::to_writer(out, value).map_err(|e| Error::Codec {
                op: "encode",
                what: "a Kafka record value".into(),
                reason: e.to_string(),
            }),
        }
    }
}

/// One record of a Kafka topic, its value decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord<T> {
    /// The partition it was read from.
    pub partition: PartitionId,
    /// Its offset in the partition.
    pub offset: LogOffset,
    /// Kafka's timestamp of the record (create or log-append time), in milliseconds since
    /// the Unix epoch, when it has one.
    pub timestamp_ms: Option<i64>,
    /// The record's key, when it has one.
    pub key: Option<Vec<u8>>,
    /// Where an exactly-once [`KafkaSink`] put it, read from its headers: none for records
    /// other producers wrote.
    pub origin: Option<KafkaOrigin>,
    /// The decoded value.
    pub value: T,
}

/// The header holding the transactional id of the [`KafkaSink`] task that wrote a record.
pub const ORIGIN_ID_HEADER: &str = "snapflow.txn";
/// The header holding a record's place in its sink task's epoch: epoch then sequence number,
/// each a big-endian u64.
pub const ORIGIN_POSITION_HEADER: &str = "snapflow.pos";

/// Where an exactly-once [`KafkaSink`] task put a record: its transactional id, the epoch it
/// committed it in, and its sequence number in that epoch. A commit that is repeated (after a
/// failure; on a broker that shows aborted transactions, or loses the marker that prevents
/// repeats) sends the same records at the same positions, so a reader that keeps, per
/// transactional id, the last position it took can drop every repeated copy
/// ([`DropReplays`]). Positions of one transactional id only grow within a partition, apart
/// from those repeats.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KafkaOrigin {
    /// The sink task's transactional id.
    pub transactional_id: String,
    /// The epoch (checkpoint id) the record was committed in.
    pub epoch: u64,
    /// Its sequence number in the epoch's transaction.
    pub seq: u64,
}

/// The bytes of [`ORIGIN_POSITION_HEADER`].
pub(crate) fn origin_position(epoch: u64, seq: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&epoch.to_be_bytes());
    b[8..].copy_from_slice(&seq.to_be_bytes());
    b
}

/// A record's origin from its two headers; `None` unless both are there and well formed.
pub(crate) fn parse_origin(
    id: Option<&[u8]>,
    position: Option<&[u8]>,
) -> Option<(Vec<u8>, u64, u64)> {
    let (id, p) = (id?, position?);
    if p.len() != 16 || id.len() > MAX_ORIGIN_ID {
        return None;
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&p[at..at + 8]);
        u64::from_be_bytes(w)
    };
    Some((id.to_vec(), word(0), word(8)))
}

/// The longest transactional id a record's origin may name (Kafka allows any length; a
/// header is untrusted input).
const MAX_ORIGIN_ID: usize = 1024;

impl<T> KafkaRecord<T> {
    /// The same record with `value` as its value (a decoded one for a raw one).
    pub(crate) fn with_value<U>(self, value: U) -> KafkaRecord<U> {
        KafkaRecord {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key,
            origin: self.origin,
            value,
        }
    }

    /// Kafka's timestamp as event time ([`Timestamp::MIN`] for a record without one), for
    /// [`LogSource::event_time`](crate::LogSource::event_time).
    pub fn event_time(&self) -> Timestamp {
        self.timestamp_ms.unwrap_or(Timestamp::MIN)
    }
}

/// The bytes of one Kafka record in a [`RecordBatch`](crate::log::RecordBatch) of a
/// [`KafkaLog`]: `partition u32 | offset u64 | timestamp i64 (i64::MIN: none) | key length u32
/// (u32::MAX: none) | key | origin id length u32 (u32::MAX: none) | [origin id | epoch u64 |
/// seq u64] | value`, little-endian.
pub(crate) fn frame(
    out: &mut Vec<u8>,
    partition: PartitionId,
    offset: u64,
    ts: Option<i64>,
    key: Option<&[u8]>,
    origin: Option<(&[u8], u64, u64)>,
    value: &[u8],
) {
    out.extend_from_slice(&partition.0.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&ts.unwrap_or(i64::MIN).to_le_bytes());
    match key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    match origin {
        Some((id, epoch, seq)) => {
            out.extend_from_slice(&(id.len() as u32).to_le_bytes());
            out.extend_from_slice(id);
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    out.extend_from_slice(value);
}

const FRAME_HEADER: usize = 20;

/// Splits a framed record (see [`frame`]); `Err` for bytes that are not one.
pub(crate) fn unframe(bytes: &[u8]) -> Result<KafkaRecord<&[u8]>> {
    let bad = |reason: &str| Error::Codec {
        op: "decode",
        what: "a Kafka record".into(),
        reason: reason.to_string(),
    };
    if bytes.len() < FRAME_HEADER {
        return Err(bad("shorter than its header"));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        w
    };
    let half = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let partition = PartitionId(half(0));
    let offset = u64::from_le_bytes(word(4));
    let ts = i64::from_le_bytes(word(12));
    // A length-prefixed field at `at` (u32::MAX: none) and where the frame goes on after it.
    let field = |at: usize, extra: usize, what: &str| -> Result<(Option<&[u8]>, usize)> {
        if at + 4 > bytes.len() {
            return Err(bad(&format!("its {what} length runs past its end")));
        }
        let len = half(at);
        if len == u32::MAX {
            return Ok((None, at + 4));
        }
        let end = (at + 4)
            .checked_add(len as usize)
            .filter(|e| e.checked_add(extra).is_some_and(|x| x <= bytes.len()))
            .ok_or_else(|| bad(&format!("its {what} runs past its end")))?;
        Ok((Some(&bytes[at + 4..end]), end + extra))
    };
    let (key, at) = field(20, 0, "key")?;
    let (id, after) = field(at, 16, "origin")?;
    let origin = id.map(|id| {
        let long = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        KafkaOrigin {
            transactional_id: String::from_utf8_lossy(id).into_owned(),
            epoch: long(after - 16),
            seq: long(after - 8),
        }
    });
    Ok(KafkaRecord {
        partition,
        offset: LogOffset(offset),
        timestamp_ms: (ts != i64::MIN).then_some(ts),
        key: key.map(<[u8]>::to_vec),
        origin,
        value: &bytes[after..],
    })
}

/// Decodes one record of a [`KafkaLog`]'s batches (its value with `codec`), as the log's
/// sources do.
pub fn decode_record<T: DeserializeOwned>(
    codec: KafkaCodec,
    bytes: &[u8],
) -> Result<KafkaRecord<T>> {
    let r = unframe(bytes)?;
    let what = || {
        format!(
            "the value of Kafka record {} of partition {}",
            r.offset, r.partition
        )
    };
    let value = match codec {
        KafkaCodec::MessagePack => {
            crate::codec::decode(r.value, "Kafka record value").map_err(|e| match e {
                Error::Codec { op, reason, .. } => Error::Codec {
                    op,
                    what: what(),
                    reason,
                },
                other => other,
            })?
        }
        KafkaCodec::Json => serde_json::from_slice(r.value).map_err(|e| Error::Codec {
            op: "decode",
            what: what(),
            reason: e.to_string(),
        })?,
    };
    Ok(r.with_value(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_record_reads_back_and_a_damaged_one_is_refused() {
        let mut b = Vec::new();
        frame(
            &mut b,
            PartitionId(3),
            42,
            Some(1_700),
            Some(b"key"),
            Some((b"job-sink-1", 9, 4)),
            b"value",
        );
        let r = unframe(&b).expect("unframe");
        assert_eq!(r.partition, PartitionId(3));
        assert_eq!(r.offset, LogOffset(42));
        assert_eq!(r.timestamp_ms, Some(1_700));
        assert_eq!(r.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(r.value, b"value");
        let origin = r.origin.expect("an origin");
        assert_eq!(
            (origin.transactional_id.as_str(), origin.epoch, origin.seq),
            ("job-sink-1", 9, 4)
        );
        let mut n = Vec::new();
        frame(&mut n, PartitionId(0), 7, None, None, None, b"");
        let r = unframe(&n).expect("unframe");
        assert_eq!((r.timestamp_ms, r.key, r.value), (None, None, &b""[..]));
        assert!(r.origin.is_none());
        for cut in [10, 23, 30, 48] {
            assert!(unframe(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long_key = b.clone();
        long_key[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert!(unframe(&long_key).is_err());
    }
}
