//! Several writes in one transaction: what the server's writer does with everything queued
//! since its last commit, so a busy fleet pays one durable commit (one fsync) per flush instead
//! of one per write.

use super::records::{AgentRecord, RunnerRecord};
use super::{agents, runners, Store, StoreError};
use shoes_vz_model::{AgentId, RunnerId, RunnerState};
use std::collections::HashMap;

/// One write, in the order the fleet made it.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    InsertRunner(&'a RunnerRecord),
    UpdateRunner(&'a RunnerRecord),
    UpsertAgent(&'a AgentRecord),
    AgentOnline(&'a AgentId, bool, i64),
}

/// The state the store holds for runners this process wrote, so an update needs no read to
/// know whether it appends history. Only live runners are kept: a runner is forgotten once it
/// is stored as deleted (a later update of it reads the row, as after a restart).
#[derive(Debug, Default)]
pub struct KnownStates {
    states: HashMap<RunnerId, RunnerState>,
}

impl KnownStates {
    pub fn get(&self, id: &RunnerId) -> Option<RunnerState> {
        self.states.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    fn record(&mut self, id: &RunnerId, state: RunnerState) {
        if state == RunnerState::Deleted {
            self.states.remove(id);
        } else {
            self.states.insert(id.clone(), state);
        }
    }
}

impl Store {
    /// Applies `writes` in order, in one transaction: all of them or none. `known` is read for
    /// stored states and, once the transaction committed, brought up to date.
    pub async fn apply(
        &self,
        writes: &[Write<'_>],
        known: &mut KnownStates,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // States as of this batch: the batch may write one runner several times.
        let mut batch: HashMap<&RunnerId, RunnerState> = HashMap::new();
        let mut tx = self.begin_write().await?;
        for write in writes {
            match *write {
                Write::InsertRunner(runner) => {
                    runners::insert_in(&mut tx, runner).await?;
                    batch.insert(&runner.runner_id, runner.state);
                }
                Write::UpdateRunner(runner) => {
                    let stored = batch
                        .get(&runner.runner_id)
                        .copied()
                        .or_else(|| known.get(&runner.runner_id));
                    runners::update_in(&mut tx, self.backend, runner, stored).await?;
                    batch.insert(&runner.runner_id, runner.state);
                }
                Write::UpsertAgent(agent) => agents::upsert_in(&mut tx, agent).await?,
                Write::AgentOnline(id, online, at_ms) => {
                    agents::set_online_in(&mut tx, id, online, at_ms).await?
                }
            }
        }
        tx.commit()
            .await
            .map_err(StoreError::query("commit a batch of writes"))?;
        for (id, state) in batch {
            known.record(id, state);
        }
        Ok(())
    }
}
