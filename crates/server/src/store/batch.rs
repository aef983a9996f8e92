//! Several writes in one transaction: what the server's writer does with everything queued
//! since its last commit, so a busy fleet pays one durable commit (one fsync) per flush instead
//! of one per write, and few statements (one INSERT for every new runner, one UPDATE per
//! runner however often it changed, one INSERT for every history row): PostgreSQL pays a
//! round trip per statement.

use super::plan::{self, AgentWrite, Stored};
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

/// What the store holds for runners this process wrote (state and history's last number), so
/// an update needs no read. Only live runners are kept: a runner is forgotten once it is
/// stored as deleted (a later update of it reads the row, as after a restart).
#[derive(Debug, Default)]
pub struct KnownStates {
    states: HashMap<RunnerId, Stored>,
}

impl KnownStates {
    pub fn get(&self, id: &RunnerId) -> Option<Stored> {
        self.states.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    fn record(&mut self, id: &RunnerId, stored: Stored) {
        if stored.state == Some(RunnerState::Deleted) {
            self.states.remove(id);
        } else {
            self.states.insert(id.clone(), stored);
        }
    }
}

impl Store {
    /// Applies `writes` in order, in one transaction: all of them or none, each runner written
    /// once (see [`plan`]). `known` stands in for reads and, once the transaction committed,
    /// is brought up to date.
    pub async fn apply(
        &self,
        writes: &[Write<'_>],
        known: &mut KnownStates,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let mut read: HashMap<RunnerId, Stored> = HashMap::new();
        for id in plan::unknown(writes, |id| known.get(id)) {
            read.insert(
                id.clone(),
                runners::read_stored(&mut tx, self.backend, id).await?,
            );
        }
        let plan = plan::plan(writes, |id| known.get(id).or_else(|| read.get(id).copied()))
            .map_err(|id| StoreError::NotFound {
                kind: "runner",
                id: id.to_string(),
            })?;
        for agent in &plan.agents {
            match *agent {
                AgentWrite::Upsert(record) => agents::upsert_in(&mut tx, record).await?,
                AgentWrite::Online(id, online, at_ms) => {
                    agents::set_online_in(&mut tx, id, online, at_ms).await?
                }
            }
        }
        runners::insert_all(&mut tx, &plan.inserts).await?;
        for runner in &plan.updates {
            runners::update_in(&mut tx, runner).await?;
        }
        runners::append_history(&mut tx, &plan.history).await?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit a batch of writes"))?;
        for (id, stored) in plan.after {
            known.record(id, stored);
        }
        Ok(())
    }
}
