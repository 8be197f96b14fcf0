//! One job as several processes: [`ProcessShare`] (which share of the partitions a process
//! runs) and [`Repartition`] (a Kafka topic through which records change process by key).
//!
//! The same job binary runs as `n` processes, each with its own share `i` of `n`
//! (`--process i --of n`): it reads the Kafka partitions `p` with `p % n == i` of its input
//! topics ([`KafkaLog::open_share`]), owns the key groups of the repartition partitions it
//! reads, and checkpoints on its own, under its own job name ([`ProcessShare::job_name`]), to
//! storage that every process can reach (an object store). Records whose key lives in another
//! process go through a repartition topic: written by this process's exactly-once
//! [`KafkaSink`] into the partition of their key group, read by the owner as a source,
//! through [`DropReplays`](super::DropReplays). No process waits for another to checkpoint or
//! recover: a process that dies restarts from its own latest checkpoint, re-commits its
//! pre-committed epochs, and replays its share of the inputs, while the others keep running.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::log::remote;
use super::{
    KafkaCodec, KafkaConfig, KafkaDelivery, KafkaLog, KafkaRecord, KafkaSink, ProcessShare,
};
use crate::error::{Error, Result};
use crate::runtime::LogSource;
use crate::state::{key_group_for, StableHash};

/// A Kafka topic through which records move to the process that owns their key: partition
/// `r` of `R` holds the key groups `[r*G/R, (r+1)*G/R)` of the job's `G` key groups, so each
/// key always travels through the same partition, and the process that reads it owns its
/// key groups.
#[derive(Debug, Clone)]
pub struct Repartition {
    config: KafkaConfig,
    topic: String,
    partitions: u32,
    max_parallelism: u32,
}

impl Repartition {
    /// The repartition topic `topic` of `partitions` partitions for a job of
    /// `max_parallelism` key groups (the same in every process).
    pub fn new(
        config: KafkaConfig,
        topic: &str,
        partitions: u32,
        max_parallelism: u32,
    ) -> Result<Repartition> {
        if partitions == 0 || max_parallelism < partitions {
            return Err(Error::Config(format!(
                "repartition topic {topic:?}: {partitions} partition(s) for {max_parallelism} \
                 key groups (need 1 <= partitions <= key groups)"
            )));
        }
        Ok(Repartition {
            config,
            topic: topic.to_string(),
            partitions,
            max_parallelism,
        })
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition `key` goes to.
    pub fn partition_of<K: StableHash + ?Sized>(&self, key: &K) -> u32 {
        let g = key_group_for(key, self.max_parallelism).0;
        (u64::from(g) * u64::from(self.partitions) / u64::from(self.max_parallelism)) as u32
    }

    /// The exactly-once sink that writes into the topic, each record into the partition of
    /// `key(record)`, MessagePack-encoded; its transactional ids start with `prefix` (one per
    /// process share: [`ProcessShare::job_name`] of the writing job).
    pub fn sink<T: Serialize, K: StableHash + ?Sized>(
        &self,
        prefix: &str,
        key: impl Fn(&T) -> &K + Send + Sync + 'static,
    ) -> Result<KafkaSink<T>> {
        let delivery = KafkaDelivery::ExactlyOnce {
            transactional_id_prefix: prefix.to_string(),
        };
        let this = self.clone();
        Ok(KafkaSink::new(
            self.config.clone(),
            &self.topic,
            delivery,
            KafkaCodec::MessagePack,
        )?
        .with_partition(move |r: &T| this.partition_of(key(r))))
    }

    /// The log of this process's share of the topic and a source over it (unbounded), its
    /// values MessagePack-decoded. Read it through [`DropReplays`](super::DropReplays),
    /// keyed by the same key the sink partitioned by.
    pub fn source<T: DeserializeOwned + Send + 'static>(
        &self,
        share: ProcessShare,
    ) -> Result<(Arc<KafkaLog>, LogSource<KafkaRecord<T>>)> {
        let log = Arc::new(KafkaLog::open_share(
            self.config.clone(),
            &self.topic,
            share,
        )?);
        let source = log.source::<T>(KafkaCodec::MessagePack);
        Ok((log, source))
    }

    /// Creates the topic through the admin API, with `replication` replicas; a topic that
    /// exists already is fine (its partition count is not checked here: `source` uses what
    /// the broker has). librdkafka's mock cluster does not answer the admin API (create its
    /// topics with `MockCluster::create_topic`).
    pub fn create(&self, replication: i32) -> Result<()> {
        create_topic(&self.config, &self.topic, self.partitions, replication)
    }
}

/// Creates `topic` with `partitions` partitions and `replication` replicas through the admin
/// API, waiting up to the configuration's request timeout; an existing topic is fine.
pub fn create_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: u32,
    replication: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .client(&[])
        .create()
        .map_err(|e| remote("creating a Kafka admin client", &e))?;
    let new = NewTopic::new(
        topic,
        partitions as i32,
        TopicReplication::Fixed(replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(config.request_timeout));
    let results = futures::executor::block_on(admin.create_topics([&new], &options))
        .map_err(|e| remote(&format!("creating Kafka topic {topic:?}"), &e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Remote {
                    what: format!("creating Kafka topic {name:?}"),
                    reason: code.to_string(),
                    class: crate::error::ErrorClass::Fatal,
                })
            }
        }
    }
    // Metadata of a new topic reaches every broker shortly after.
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repartition_topic_keeps_each_key_in_one_partition_by_key_group() {
        let r = Repartition::new(KafkaConfig::new("x:1"), "t", 6, 128).expect("topic");
        let mut used = [0u32; 6];
        for w in 0..1000u64 {
            let p = r.partition_of(&w);
            assert_eq!(p, r.partition_of(&w));
            used[p as usize] += 1;
            let g = u32::from(key_group_for(&w, 128).0);
            assert!(g * 6 / 128 == p, "key group {g} in partition {p}");
        }
        assert!(used.iter().all(|n| *n > 100), "{used:?}");
        assert!(Repartition::new(KafkaConfig::new("x:1"), "t", 200, 128).is_err());
    }
}
