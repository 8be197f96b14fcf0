//! [`TypedLog`]: a replayable log of typed records, encoded by the [`codec`](crate::codec).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{LogOffset, OffsetRange, PartitionId, ReplayableLog};
use crate::codec::{decode, encode, encode_into};
use crate::error::{Error, Result};

/// A typed view of a [`ReplayableLog`]: values of `T` encoded with MessagePack.
#[derive(Debug)]
pub struct TypedLog<T> {
    log: Arc<dyn ReplayableLog>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedLog<T> {
    fn clone(&self) -> Self {
        TypedLog {
            log: Arc::clone(&self.log),
            _type: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> TypedLog<T> {
    /// Wraps a log whose records are (or will be) MessagePack-encoded values of `T`.
    pub fn new(log: Arc<dyn ReplayableLog>) -> Self {
        TypedLog {
            log,
            _type: PhantomData,
        }
    }

    /// The untyped log underneath.
    pub fn inner(&self) -> &Arc<dyn ReplayableLog> {
        &self.log
    }

    /// Appends one value.
    pub fn append(&self, partition: PartitionId, value: &T) -> Result<LogOffset> {
        let bytes = encode(value, "log record")?;
        self.log.append(partition, &bytes)
    }

    /// Appends values in order with one batch write.
    pub fn append_batch(&self, partition: PartitionId, values: &[T]) -> Result<OffsetRange> {
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(values.len());
        for v in values {
            encode_into(v, &mut buf, "log record")?;
            ends.push(buf.len());
        }
        let mut slices = Vec::with_capacity(values.len());
        let mut start = 0;
        for end in ends {
            slices.push(&buf[start..end]);
            start = end;
        }
        self.log.append_batch(partition, &slices)
    }

    /// Reads and decodes up to `max_records` values from `from`.
    pub fn read(
        &self,
        partition: PartitionId,
        from: LogOffset,
        max_records: usize,
    ) -> Result<Vec<(LogOffset, T)>> {
        let batch = self.log.read(partition, from, max_records)?;
        batch
            .iter()
            .map(|(offset, bytes)| {
                decode(bytes, "log record")
                    .map(|v| (offset, v))
                    .map_err(|e| match e {
                        Error::Codec { op, reason, .. } => Error::Codec {
                            op,
                            what: format!("log record at partition {partition} offset {offset}"),
                            reason,
                        },
                        other => other,
                    })
            })
            .collect()
    }
}
