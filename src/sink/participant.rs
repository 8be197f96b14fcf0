//! [`ActorParticipant`]: an ordinary actix actor of the application that takes part in a job's
//! checkpoints and is supervised by the job.
//!
//! The job hosts the actor (one instance per sink task, on an arbiter of its own), delivers
//! every output record to it as a [`Deliver`] message, and at each barrier asks it for a
//! snapshot of its state ([`CheckpointedActor::snapshot`]), taken after every record before
//! the barrier and none after: the Chandy-Lamport idea applied to an application actor. The
//! snapshot is stored in the sink task's state in the checkpoint.
//!
//! Costs: the sink task waits (at most [`ASK_TIMEOUT`]) for the actor's snapshot at each
//! barrier, behind the records queued before it; deliveries are not bounded by the actor's
//! mailbox (a slow actor's backlog grows, and so does that wait). The parallelism of the sink
//! cannot change across a restore.
//!
//! Supervision: when the actor panics or stops, the next delivery or barrier finds its mailbox
//! closed and the sink task fails ([`Error::DeliveryFailed`], a restart). Its failover region
//! restarts with its own restart strategy: a new actor is made, restored from the snapshot of
//! the checkpoint restored from, and the job replays the records since, so its state is what a
//! failure-free run gives. A restore of the job rolls the actor back the same way.
//!
//! What this covers: the messages the job delivers to the actor. Messages that other
//! application actors send it directly are not replayed. [`ActorParticipant::addr`] gives the
//! current instance's address (a restart replaces it).
//!
//! Implement [`CheckpointedActor`] and `Handler<Deliver<T>>`, and call
//! [`checkpointed_actor!`](crate::checkpointed_actor) for the type: it adds the handlers of
//! the job's own messages ([`TakeSnapshot`], [`RestoreSnapshot`], [`ChaosStop`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TwoPhaseCommitSink;
use crate::checkpoint::CheckpointId;
use crate::error::{Error, Result};
use crate::ids::TaskInfo;

/// An application actor whose state joins the job's checkpoints.
pub trait CheckpointedActor: Actor<Context = Context<Self>> {
    /// Its state as stored in a checkpoint.
    type State: Serialize + DeserializeOwned + Send + 'static;

    /// Its state now (called between two messages, after every record before the barrier).
    fn snapshot(&self) -> Self::State;

    /// Replaces its state with one from a checkpoint (on a fresh instance, before any record).
    fn restore(&mut self, state: Self::State);
}

/// An output record, delivered to the hosted actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Deliver<T>(pub T);

/// The job asks the actor for its snapshot (handled by [`checkpointed_actor!`](crate::checkpointed_actor)).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<u8>>")]
pub struct TakeSnapshot;

/// The job restores the actor's state (handled by [`checkpointed_actor!`](crate::checkpointed_actor)).
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct RestoreSnapshot(pub Vec<u8>);

/// The chaos monkey stops the actor (handled by [`checkpointed_actor!`](crate::checkpointed_actor)).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ChaosStop;

/// Implements the handlers of the job's messages ([`TakeSnapshot`], [`RestoreSnapshot`],
/// [`ChaosStop`]) for a [`CheckpointedActor`] type.
#[macro_export]
macro_rules! checkpointed_actor {
    ($actor:ty) => {
        impl ::actix::Handler<$crate::sink::TakeSnapshot> for $actor {
            type Result = $crate::Result<Vec<u8>>;
            fn handle(
                &mut self,
                _msg: $crate::sink::TakeSnapshot,
                _ctx: &mut ::actix::Context<Self>,
            ) -> Self::Result {
                let state = <$actor as $crate::sink::CheckpointedActor>::snapshot(self);
                $crate::codec::encode(&state, "actor snapshot")
            }
        }
        impl ::actix::Handler<$crate::sink::RestoreSnapshot> for $actor {
            type Result = $crate::Result<()>;
            fn handle(
                &mut self,
                msg: $crate::sink::RestoreSnapshot,
                _ctx: &mut ::actix::Context<Self>,
            ) -> Self::Result {
                let state = $crate::codec::decode(&msg.0, "actor snapshot")?;
                <$actor as $crate::sink::CheckpointedActor>::restore(self, state);
                Ok(())
            }
        }
        impl ::actix::Handler<$crate::sink::ChaosStop> for $actor {
            type Result = ();
            fn handle(&mut self, _msg: $crate::sink::ChaosStop, ctx: &mut ::actix::Context<Self>) {
                ::actix::ActorContext::stop(ctx);
            }
        }
    };
}

/// What the sink tasks share with the application: each task's current actor and the last
/// snapshot it took.
struct Hosted<A: Actor> {
    addrs: HashMap<u32, Addr<A>>,
    snapshots: HashMap<u32, Vec<u8>>,
}

/// A sink that hosts an application actor per sink task (see the module docs). Clones share
/// the hosted actors' addresses: keep one to reach them.
pub struct ActorParticipant<A: Actor, T> {
    make: Arc<dyn Fn() -> A + Send + Sync>,
    hosted: Arc<Mutex<Hosted<A>>>,
    task: u32,
    actor: Option<(Addr<A>, Arbiter)>,
    _t: PhantomData<fn(T)>,
}

impl<A: Actor, T> Clone for ActorParticipant<A, T> {
    fn clone(&self) -> Self {
        ActorParticipant {
            make: Arc::clone(&self.make),
            hosted: Arc::clone(&self.hosted),
            task: 0,
            actor: None,
            _t: PhantomData,
        }
    }
}

impl<A: Actor, T> std::fmt::Debug for ActorParticipant<A, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActorParticipant")
            .field("task", &self.task)
            .finish()
    }
}

impl<A: Actor, T> Drop for ActorParticipant<A, T> {
    fn drop(&mut self) {
        if let Some((_, arbiter)) = self.actor.take() {
            arbiter.stop();
        }
    }
}

/// How long a sink task waits for its hosted actor's snapshot or restore.
pub const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::DeliveryFailed {
        receiver: format!("the hosted actor {what}"),
        reason: e.to_string(),
    }
}

impl<A, T> ActorParticipant<A, T>
where
    A: CheckpointedActor + Handler<Deliver<T>> + Handler<TakeSnapshot> + Handler<RestoreSnapshot>,
    A: Handler<ChaosStop>,
    T: Send + 'static,
{
    /// A sink hosting actors made by `make` (called for every task and every restart).
    pub fn new(make: impl Fn() -> A + Send + Sync + 'static) -> Self {
        ActorParticipant {
            make: Arc::new(make),
            hosted: Arc::new(Mutex::new(Hosted {
                addrs: HashMap::new(),
                snapshots: HashMap::new(),
            })),
            task: 0,
            actor: None,
            _t: PhantomData,
        }
    }

    fn hosted(&self) -> std::sync::MutexGuard<'_, Hosted<A>> {
        self.hosted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address of sink task `task`'s current actor, once the job has made it.
    pub fn addr(&self, task: u32) -> Option<Addr<A>> {
        self.hosted().addrs.get(&task).cloned()
    }

    /// The last snapshot sink task `task`'s actor took (at the last barrier it passed; for a
    /// job that ended, its final checkpoint).
    pub fn last_snapshot(&self, task: u32) -> Result<Option<A::State>> {
        match self.hosted().snapshots.get(&task) {
            Some(bytes) => Ok(Some(crate::codec::decode(bytes, "actor snapshot")?)),
            None => Ok(None),
        }
    }

    fn addr_here(&self) -> Result<&Addr<A>> {
        self.actor
            .as_ref()
            .map(|(a, _)| a)
            .ok_or_else(|| Error::Internal("a hosted actor used before open".into()))
    }

    /// Waits for the actor's answer on the task's thread (the actor runs on its own arbiter),
    /// for at most [`ASK_TIMEOUT`]: an actor that does not answer fails the sink task.
    fn ask<M>(&self, msg: M) -> Result<M::Result>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
    {
        let Some((addr, arbiter)) = &self.actor else {
            return Err(Error::Internal("a hosted actor used before open".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let send = addr.send(msg);
        arbiter.spawn(async move {
            let _ = tx.send(send.await);
        });
        let name = std::any::type_name::<A>();
        match rx.recv_timeout(ASK_TIMEOUT) {
            Ok(answer) => answer.map_err(|e| failed(name, e)),
            Err(_) => Err(failed(name, format!("no answer within {ASK_TIMEOUT:?}"))),
        }
    }
}

impl<A, T> TwoPhaseCommitSink<T> for ActorParticipant<A, T>
where
    A: CheckpointedActor + Handler<Deliver<T>> + Handler<TakeSnapshot> + Handler<RestoreSnapshot>,
    A: Handler<ChaosStop>,
    T: Send + 'static,
{
    /// The snapshot of the actor at the barrier: `(epoch, state bytes)`.
    type Txn = (u64, Vec<u8>);

    fn open(&mut self, task: &TaskInfo) -> Result<()> {
        self.task = task.task.index;
        let arbiter = Arbiter::new();
        let make = Arc::clone(&self.make);
        let addr = A::start_in_arbiter(&arbiter.handle(), move |_| make());
        self.hosted().addrs.insert(self.task, addr.clone());
        self.actor = Some((addr, arbiter));
        Ok(())
    }

    fn begin(&mut self, _epoch: CheckpointId) -> Result<()> {
        Ok(())
    }

    fn write(&mut self, record: T) -> Result<()> {
        match self.addr_here()?.try_send(Deliver(record)) {
            Ok(()) => Ok(()),
            // A full mailbox still takes the message (actix queues past its capacity).
            Err(SendError::Full(msg)) => {
                self.addr_here()?.do_send(msg);
                Ok(())
            }
            Err(SendError::Closed(_)) => Err(failed(std::any::type_name::<A>(), "it stopped")),
        }
    }

    fn pre_commit(&mut self, epoch: CheckpointId) -> Result<Self::Txn> {
        let bytes = self.ask(TakeSnapshot)??;
        self.hosted().snapshots.insert(self.task, bytes.clone());
        Ok((epoch.0, bytes))
    }

    fn commit(&mut self, _txn: &Self::Txn) -> Result<()> {
        Ok(())
    }

    fn recover(&mut self, committed: &[Self::Txn]) -> Result<()> {
        let newest = committed.iter().map(|(epoch, _)| *epoch).max();
        if committed.iter().filter(|(e, _)| Some(*e) == newest).count() > 1 {
            return Err(Error::Config(format!(
                "sink task {} would restore the snapshots of several hosted actors into one: an ActorParticipant cannot change its parallelism",
                self.task
            )));
        }
        if let Some((_, bytes)) = committed.iter().max_by_key(|(epoch, _)| *epoch) {
            self.ask(RestoreSnapshot(bytes.clone()))??;
        }
        Ok(())
    }

    fn kill_hosted(&mut self) -> bool {
        match &self.actor {
            Some((addr, _)) => {
                addr.do_send(ChaosStop);
                true
            }
            None => false,
        }
    }
}
