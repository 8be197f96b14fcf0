//! [`WriteFence`]: the writes and the task actors one run of a job has started, and the fence
//! that ends them.
//!
//! Every write a job makes to its checkpoint storage (a task's state, a manifest with the
//! retention that follows it, the removal of an aborted checkpoint) holds a [`WritePermit`]
//! from the job's fence for as long as it runs, taken before the write starts. So does every
//! task actor, for its whole life (taken before it is handed to its arbiter): a task writes
//! its sink's output, and a sink's recovery deletes pending files it does not know. When the
//! job ends, the job master (or the job root) closes the fence (nothing starts after that:
//! taking a permit fails) and the root waits until every permit is dropped before it reports
//! the end. The root also waits for the fence to drain, without closing it, before it
//! restarts a master that died: nothing of the dead incarnation outlives the restore.
//!
//! **Invariant:** once a job's `wait()` has returned, no write of that job can land in its
//! checkpoint storage and none of its task actors is alive, so a job started on the same
//! storage and output afterwards never sees a manifest of the earlier run appear after it has
//! read the latest checkpoint, nor has its pending sink files deleted by the earlier run.

use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct FenceState {
    closed: bool,
    in_flight: usize,
}

/// The writes of one job run (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct WriteFence {
    state: Mutex<FenceState>,
    idle: tokio::sync::Notify,
}

/// Held by one write while it runs.
#[derive(Debug)]
pub(crate) struct WritePermit(Arc<WriteFence>);

impl WriteFence {
    fn lock(&self) -> MutexGuard<'_, FenceState> {
        // The state is two plain fields, consistent whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit for one write, or `None` once the fence is closed (the job is ending: the
    /// write must not start).
    pub(crate) fn begin(self: &Arc<Self>) -> Option<WritePermit> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        s.in_flight += 1;
        Some(WritePermit(Arc::clone(self)))
    }

    /// Refuses every later [`begin`](Self::begin).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    /// Writes running now.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Resolves once no write holds a permit.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            drop(s);
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_fence_refuses_new_writes_and_drains_once_running_ones_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let fence = Arc::new(WriteFence::default());
            let running = fence.begin().expect("open fence");
            fence.close();
            assert!(fence.begin().is_none(), "a closed fence refuses writes");
            let waiter = {
                let fence = Arc::clone(&fence);
                tokio::spawn(async move { fence.drained().await })
            };
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished(), "a running write holds the drain");
            drop(running);
            waiter.await.expect("drained");
            assert_eq!(fence.in_flight(), 0);
        });
    }
}
