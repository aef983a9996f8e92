//! Who waits for which runner, and runners nobody claimed.
//!
//! myshoes retries a job's AddInstance under the same runner_name (myshoes-behaviour.md), so a
//! runner whose caller went away (the call was cut, timed out, or the server restarted) is
//! not destroyed at once: a retry attaches to it and gets the same answer. Only when no call
//! waits for a never-answered runner for `timeouts.claim_grace` is it destroyed.

use super::queue::Placed;
use super::{Fleet, FleetState};
use shoes_vz_model::RunnerId;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// One AddInstance call waiting on a runner; dropping it (the call ended, however) is how
/// the fleet learns the runner may have lost its last caller.
pub(super) struct RunnerWaiter {
    fleet: Arc<Fleet>,
    runner_id: RunnerId,
}

impl RunnerWaiter {
    /// For a caller already counted in the runner's `waiters`.
    pub(super) fn counted(fleet: &Arc<Fleet>, runner_id: RunnerId) -> RunnerWaiter {
        RunnerWaiter {
            fleet: Arc::clone(fleet),
            runner_id,
        }
    }

    pub(super) fn runner_id(&self) -> &RunnerId {
        &self.runner_id
    }
}

impl Drop for RunnerWaiter {
    fn drop(&mut self) {
        let mut state = self.fleet.lock();
        leave_runner(&mut state, &self.runner_id);
    }
}

fn leave_runner(state: &mut FleetState, runner_id: &RunnerId) {
    if let Some(entry) = state.runners.get_mut(runner_id) {
        entry.waiters = entry.waiters.saturating_sub(1);
        if entry.waiters == 0 && !entry.record.answered {
            entry.unclaimed_since = Some(Instant::now());
        }
    }
}

/// One AddInstance call waiting in the queue.
pub(super) struct QueueWaiter {
    fleet: Arc<Fleet>,
    queue_id: u64,
    placed: watch::Receiver<Option<Placed>>,
    /// Set once the call moved on to wait for its runner (and so counts there).
    moved_on: bool,
}

impl QueueWaiter {
    pub(super) fn new(
        fleet: &Arc<Fleet>,
        queue_id: u64,
        placed: watch::Receiver<Option<Placed>>,
    ) -> QueueWaiter {
        QueueWaiter {
            fleet: Arc::clone(fleet),
            queue_id,
            placed,
            moved_on: false,
        }
    }

    pub(super) fn placed(&mut self) -> &mut watch::Receiver<Option<Placed>> {
        &mut self.placed
    }

    /// The call was placed: it now waits for `runner_id`, where placement counted it.
    pub(super) fn into_runner_waiter(mut self, runner_id: RunnerId) -> RunnerWaiter {
        self.moved_on = true;
        RunnerWaiter::counted(&self.fleet, runner_id)
    }
}

impl Drop for QueueWaiter {
    fn drop(&mut self) {
        if self.moved_on {
            return;
        }
        let mut state = self.fleet.lock();
        if state.queue.leave(self.queue_id) {
            return;
        }
        // Placed after this call stopped looking: it was counted on the runner.
        let placed = self.placed.borrow().clone();
        if let Some(Placed::Runner(runner_id)) = placed {
            leave_runner(&mut state, &runner_id);
        }
    }
}

impl Fleet {
    /// Deletes never-answered runners that nobody has waited for in `claim_grace`.
    pub fn expire_unclaimed(&self) {
        let grace = self.config.timeouts.claim_grace();
        let mut state = self.lock();
        let expired: Vec<RunnerId> = state
            .runners
            .values()
            .filter(|e| {
                e.waiters == 0
                    && !e.record.answered
                    && !e.record.delete_requested
                    && e.record.state.holds_slot()
                    && e.unclaimed_since
                        .is_some_and(|since| since.elapsed() >= grace)
            })
            .map(|e| e.record.runner_id.clone())
            .collect();
        for runner_id in expired {
            tracing::warn!(runner = %runner_id, ?grace, "nobody claimed the runner: its AddInstance caller went away and no retry came; destroying it");
            if let Some(entry) = state.runners.get_mut(&runner_id) {
                entry.record.end_reason = format!(
                    "nobody claimed it within {grace:?} (its AddInstance caller went away and no retry under its runner_name came)"
                );
            }
            self.metrics.count_unclaimed();
            self.metrics
                .count_failure(crate::metrics::FailureReason::Unclaimed);
            // Fire and forget: the write stays queued in order; no caller waits for it.
            drop(self.request_delete(&mut state, &runner_id));
        }
    }
}
