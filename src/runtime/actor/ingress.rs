//! [`Ingress`]: typed input from the application into a job, through a log the job owns.
//!
//! `JobBuilder::ingress::<T>("clicks", log)` adds a source reading `log`; once the job runs,
//! `JobHandle::ingress::<T>("clicks")` gives an [`Ingress<T>`] that encodes each record,
//! appends it to a partition (by key, or round robin) and answers once it is durable under the
//! log's sync policy (group commit for a log that syncs on an interval). [`Ingress::recipient`]
//! gives the same as an actix `Recipient<Ingest<T>>`.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use super::outside::{IngressEntry, Outside};
use crate::error::{Error, Result};
use crate::log::{Append, LogOffset, PartitionId};
use crate::state::{stable_hash, StableHash};

/// Typed input into a running job, from [`JobHandle::ingress`](crate::JobHandle::ingress) for a
/// vertex added with [`JobBuilder::ingress`](crate::JobBuilder::ingress). Cheap to clone.
pub struct Ingress<T> {
    entry: Arc<IngressEntry>,
    outside: Arc<Outside>,
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for Ingress<T> {
    fn clone(&self) -> Self {
        Ingress {
            entry: Arc::clone(&self.entry),
            outside: Arc::clone(&self.outside),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Ingress<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("vertex", &self.entry.vertex)
            .field("partitions", &self.entry.partitions)
            .finish()
    }
}

/// A record for an [`Ingress`] sent as an actix message; the reply is its log offset once it
/// is durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<LogOffset>")]
pub struct Ingest<T> {
    /// The record.
    pub record: T,
    /// The partition it goes to: by the key's stable hash, or round robin when `None`.
    pub key_hash: Option<u64>,
}

impl<T> Ingest<T> {
    /// A record sent round robin.
    pub fn new(record: T) -> Self {
        Ingest {
            record,
            key_hash: None,
        }
    }

    /// A record sent to the partition of `key`: records with one key stay in order.
    pub fn keyed<K: StableHash + ?Sized>(key: &K, record: T) -> Self {
        Ingest {
            record,
            key_hash: Some(stable_hash(key)),
        }
    }
}

impl<T: Serialize + Send + 'static> Ingress<T> {
    /// The ingress of vertex `name`, checked to take records of type `T`.
    pub(crate) fn lookup(outside: &Arc<Outside>, name: &str) -> Result<Ingress<T>> {
        let what = format!("ingress '{name}'");
        let Some(entry) = outside.ingresses.get(name) else {
            let have = outside.ingresses.keys().collect();
            return Err(outside.no_such(what, name, "an ingress", have));
        };
        if entry.type_id != TypeId::of::<T>() {
            return Err(Error::NoSuchEndpoint {
                what: format!("job '{}' has no {what}", outside.job),
                reason: format!(
                    "it takes {}, not {}",
                    entry.type_name,
                    std::any::type_name::<T>()
                ),
            });
        }
        Ok(Ingress {
            entry: Arc::clone(entry),
            outside: Arc::clone(outside),
            _t: PhantomData,
        })
    }

    /// The vertex's name.
    pub fn vertex(&self) -> &str {
        &self.entry.vertex
    }

    fn what(&self) -> String {
        format!("ingress '{}'", self.entry.vertex)
    }

    async fn append(&self, partition: PartitionId, record: &T) -> Result<LogOffset> {
        if self.outside.has_ended() {
            return Err(self.outside.ended_error(self.what()));
        }
        let append = Append::encode(partition, record)?;
        let answer = match self.entry.writer.send(append).await {
            Ok(answer) => answer,
            Err(_) => Err(self.outside.ended_error(self.what())),
        };
        self.outside.endpoints.wake(self.entry.sources.clone());
        answer
    }

    /// Appends `record` to the next partition, round robin; answers with its offset once it is
    /// durable. Fails with [`Error::JobEnded`] after the job ended.
    pub async fn send(&self, record: &T) -> Result<LogOffset> {
        let n = self.entry.next.fetch_add(1, Ordering::Relaxed);
        self.append(PartitionId(n % self.entry.partitions), record)
            .await
    }

    /// Appends `record` to the partition of `key` (its stable hash): the records of one key
    /// keep their order.
    pub async fn send_keyed<K: StableHash + ?Sized>(
        &self,
        key: &K,
        record: &T,
    ) -> Result<LogOffset> {
        let p = (stable_hash(key) % u64::from(self.entry.partitions)) as u32;
        self.append(PartitionId(p), record).await
    }

    /// Starts an actor on the current arbiter that takes [`Ingest`] messages for this ingress,
    /// and returns its recipient.
    pub fn recipient(&self) -> Recipient<Ingest<T>> {
        IngressActor {
            ingress: self.clone(),
        }
        .start()
        .recipient()
    }
}

/// The actor behind [`Ingress::recipient`].
struct IngressActor<T> {
    ingress: Ingress<T>,
}

impl<T: Serialize + Send + 'static> Actor for IngressActor<T> {
    type Context = Context<Self>;
}

impl<T: Serialize + Send + 'static> Handler<Ingest<T>> for IngressActor<T> {
    type Result = ResponseFuture<Result<LogOffset>>;

    fn handle(&mut self, msg: Ingest<T>, _ctx: &mut Self::Context) -> Self::Result {
        let ingress = self.ingress.clone();
        Box::pin(async move {
            match msg.key_hash {
                Some(h) => {
                    let p = (h % u64::from(ingress.entry.partitions)) as u32;
                    ingress.append(PartitionId(p), &msg.record).await
                }
                None => ingress.send(&msg.record).await,
            }
        })
    }
}
