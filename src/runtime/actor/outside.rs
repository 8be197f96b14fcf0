//! [`Outside`]: what the running job keeps for the addresses of its actor operators and its
//! ingresses, shared by every handle.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use super::wire::{Endpoints, Replies};
use crate::error::Error;
use crate::log::Append;

/// An actor operator vertex as the running job knows it.
#[derive(Debug)]
pub(crate) struct ActorEntry {
    pub(crate) vertex: String,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) first_task: usize,
    pub(crate) parallelism: u32,
    pub(crate) max_parallelism: u32,
    pub(crate) replies: Arc<Replies>,
    pub(crate) partitions: u32,
    pub(crate) writer: Recipient<Append>,
    pub(crate) seq: AtomicU64,
    /// The task numbers of the command source, woken after each append.
    pub(crate) sources: std::ops::Range<usize>,
    /// The command names the operator declared (`ActorOperator::commands`).
    pub(crate) declared: Arc<std::collections::HashSet<String>>,
    /// Keyed (addressed by key) or not (addressed by instance index).
    pub(crate) keyed: bool,
}

/// What the handles of a running job reach its actors through.
#[derive(Debug)]
pub(crate) struct Outside {
    pub(crate) job: String,
    pub(crate) vertices: Vec<String>,
    pub(crate) actors: HashMap<String, Arc<ActorEntry>>,
    pub(crate) ingresses: HashMap<String, Arc<IngressEntry>>,
    pub(crate) endpoints: Arc<Endpoints>,
    /// True once the job has ended.
    pub(crate) ended: watch::Receiver<bool>,
    pub(crate) query_timeout: Duration,
}

impl Outside {
    pub(crate) fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    pub(crate) fn ended_error(&self, what: String) -> Error {
        Error::JobEnded {
            job: self.job.clone(),
            what,
        }
    }

    /// Resolves once the job has ended.
    pub(crate) async fn until_ended(mut ended: watch::Receiver<bool>) {
        let _ = ended.wait_for(|e| *e).await;
    }

    /// The error for an endpoint named `name` that is not of the kind asked for.
    pub(crate) fn no_such(
        &self,
        what: String,
        name: &str,
        kind: &str,
        have: Vec<&String>,
    ) -> Error {
        let reason = if self.vertices.iter().any(|v| v == name) {
            format!("vertex '{name}' is not {kind}")
        } else {
            format!("there is no vertex named '{name}'")
        };
        let mut have: Vec<&str> = have.into_iter().map(String::as_str).collect();
        have.sort_unstable();
        Error::NoSuchEndpoint {
            what: format!("job '{}' has no {what}", self.job),
            reason: format!("{reason} (the job has: {})", have.join(", ")),
        }
    }
}

/// An ingress vertex as the running job knows it.
#[derive(Debug)]
pub(crate) struct IngressEntry {
    pub(crate) vertex: String,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) partitions: u32,
    pub(crate) writer: Recipient<Append>,
    pub(crate) next: AtomicU32,
    /// The task numbers of the ingress source, woken after each append.
    pub(crate) sources: std::ops::Range<usize>,
}
