//! [`DropReplays`]: a keyed operator that drops the repeated copies of records an exactly-once
//! [`KafkaSink`](super::KafkaSink) wrote, by their [`KafkaOrigin`](super::KafkaOrigin).
//!
//! On a Kafka broker, a `read_committed` reader never sees a repeat: aborted transactions are
//! hidden and the sink's markers keep a committed epoch from being committed again. Where
//! that does not hold (librdkafka's mock cluster shows aborted records and keeps no markers;
//! a reader with `read_uncommitted`), a commit repeated after a failure puts the epoch's
//! records into the topic again, at the same positions and in the same order. This operator
//! keeps, per key, the last position taken per (transactional id, partition), and drops a
//! record at or below it; positions of one id grow within a partition apart from repeats, so
//! exactly the copies are dropped, and nothing else.
//!
//! **Invariant:** the state is keyed state (`snapflow.kafka.replays`: per key, a short list of
//! `(transactional id, partition, epoch, seq)`), checkpointed with the job, so a restore
//! resumes the filter at the offsets its source resumes at. It grows with the keys and the
//! writers, never with the records.

use serde::{Deserialize, Serialize};

use super::KafkaRecord;
use crate::error::{Error, Result};
use crate::runtime::{Collector, Data, KeyedContext, KeyedOperator};
use crate::state::{StateKey, ValueState};

/// The keyed state's name.
pub const REPLAYS_STATE: &str = "snapflow.kafka.replays";

/// One writer's last position seen for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    transactional_id: String,
    partition: u32,
    epoch: u64,
    seq: u64,
}

/// Drops repeated copies of records (see the module documentation). Use it right after the
/// `key_by` of a stream read from a topic that an exactly-once sink wrote:
/// `stream.key_by(..).process("drop-replays", DropReplays::new())`. Records without an origin
/// pass.
#[derive(Debug, Clone, Default)]
pub struct DropReplays {
    state: Option<ValueState<Vec<Seen>>>,
}

impl DropReplays {
    /// A new filter.
    pub fn new() -> DropReplays {
        DropReplays::default()
    }
}

impl<K: StateKey, T: Data> KeyedOperator<K, KafkaRecord<T>, KafkaRecord<T>> for DropReplays {
    fn open(&mut self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        self.state = Some(ctx.state().value_state::<Vec<Seen>>(REPLAYS_STATE)?);
        Ok(())
    }

    fn process(
        &mut self,
        record: KafkaRecord<T>,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Collector<KafkaRecord<T>>,
    ) -> Result<()> {
        let Some(origin) = &record.origin else {
            out.emit(record);
            return Ok(());
        };
        let state = self
            .state
            .as_ref()
            .ok_or_else(|| Error::Config("DropReplays used before open".into()))?;
        let seen = state.get_or_insert_with(ctx.state(), Vec::new)?;
        let partition = record.partition.0;
        let at = (origin.epoch, origin.seq);
        match seen
            .iter_mut()
            .find(|s| s.partition == partition && s.transactional_id == origin.transactional_id)
        {
            Some(s) if at <= (s.epoch, s.seq) => return Ok(()),
            Some(s) => (s.epoch, s.seq) = at,
            None => seen.push(Seen {
                transactional_id: origin.transactional_id.clone(),
                partition,
                epoch: origin.epoch,
                seq: origin.seq,
            }),
        }
        out.emit(record);
        Ok(())
    }
}
