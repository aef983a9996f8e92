//! AddInstance calls waiting for a free slot, first come first served.
//!
//! myshoes retries a refused AddInstance with an uncapped 2^n s backoff (myshoes-behaviour.md),
//! so with two macOS VMs per host a burst answered ResourceExhausted at once would wait many
//! minutes for slots that free up seconds later. Instead a call with no room waits here up to
//! `timeouts.queue_wait`. Whenever room may have appeared (a runner ended, an agent came
//! online), the queue is walked in arrival order and every call that now fits is placed: a
//! call never overtakes an earlier one that fits the same room.

use super::instances::AddPlan;
use super::{Fleet, FleetState};
use crate::scheduler::PlacementError;
use shoes_vz_model::RunnerId;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// How a queued call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    Runner(RunnerId),
    /// The fleet changed so that the request can never be served.
    Refused(PlacementError),
}

struct Queued {
    id: u64,
    plan: Arc<AddPlan>,
    arrived: Instant,
    /// Calls waiting on this entry (a retry under the same runner_name joins the first).
    waiters: usize,
    placed: watch::Sender<Option<Placed>>,
}

#[derive(Default)]
pub struct AddQueue {
    entries: VecDeque<Queued>,
    next_id: u64,
}

impl AddQueue {
    /// AddInstance calls waiting now.
    pub fn waiting_calls(&self) -> usize {
        self.entries.iter().map(|q| q.waiters).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Joins the queued call for the same runner_name, if there is one.
    pub(super) fn join(&mut self, name: &str) -> Option<(u64, watch::Receiver<Option<Placed>>)> {
        let queued = self
            .entries
            .iter_mut()
            .find(|q| q.plan.name.as_str() == name)?;
        queued.waiters += 1;
        Some((queued.id, queued.placed.subscribe()))
    }

    pub(super) fn push(
        &mut self,
        plan: Arc<AddPlan>,
        arrived: Instant,
    ) -> (u64, watch::Receiver<Option<Placed>>) {
        self.next_id += 1;
        let (placed, receiver) = watch::channel(None);
        self.entries.push_back(Queued {
            id: self.next_id,
            plan,
            arrived,
            waiters: 1,
            placed,
        });
        (self.next_id, receiver)
    }

    /// One caller of entry `id` stopped waiting; the entry goes when none is left. Returns
    /// false when the entry is no longer queued (it was placed or refused meanwhile).
    pub(super) fn leave(&mut self, id: u64) -> bool {
        let Some(index) = self.entries.iter().position(|q| q.id == id) else {
            return false;
        };
        let queued = &mut self.entries[index];
        queued.waiters = queued.waiters.saturating_sub(1);
        if queued.waiters == 0 {
            self.entries.remove(index);
        }
        true
    }
}

impl Fleet {
    /// Places every queued call that fits now, in arrival order.
    pub(super) fn pump(&self, state: &mut FleetState) {
        let mut index = 0;
        while index < state.queue.entries.len() {
            let plan = Arc::clone(&state.queue.entries[index].plan);
            match self.try_place(state, &plan) {
                Ok(placement) => {
                    let Some(queued) = state.queue.entries.remove(index) else {
                        break;
                    };
                    let runner_id = self.create_runner(
                        state,
                        &queued.plan,
                        placement,
                        queued.waiters,
                        queued.arrived,
                    );
                    tracing::info!(runner = %runner_id, runner_name = %queued.plan.name, waited = ?queued.arrived.elapsed(), "queued request placed");
                    queued.placed.send_replace(Some(Placed::Runner(runner_id)));
                }
                Err(never @ PlacementError::NeverFits(_)) => {
                    if let Some(queued) = state.queue.entries.remove(index) {
                        queued.placed.send_replace(Some(Placed::Refused(never)));
                    }
                }
                Err(PlacementError::NoRoomNow(_) | PlacementError::NoAgents) => index += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoes_vz_model::{ResourceSpec, ResourceType, RunnerName};

    fn plan(name: &str) -> Arc<AddPlan> {
        Arc::new(AddPlan {
            name: RunnerName::parse(name).expect("name"),
            setup_script: String::new(),
            labels: Vec::new(),
            served: ResourceType::Small,
            spec: ResourceSpec {
                vcpus: 1,
                memory_mib: 1,
            },
        })
    }

    #[test]
    fn retries_join_the_first_call_and_the_entry_lives_while_anyone_waits() {
        let mut queue = AddQueue::default();
        let (first, _rx) = queue.push(plan("myshoes-a"), Instant::now());
        let (second, _rx2) = queue.push(plan("myshoes-b"), Instant::now());
        let (joined, _rx3) = queue.join("myshoes-a").expect("joined");
        assert_eq!(joined, first);
        assert_eq!(queue.waiting_calls(), 3);
        assert!(queue.join("myshoes-c").is_none());
        assert!(queue.leave(first));
        assert_eq!(queue.waiting_calls(), 2, "the retry still waits");
        assert!(queue.leave(first));
        assert!(!queue.leave(first), "gone once nobody waits");
        assert_eq!(queue.entries.front().map(|q| q.id), Some(second));
    }
}
