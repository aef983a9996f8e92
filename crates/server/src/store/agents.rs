//! Agents: registered (upserted) on connect, marked online/offline as they come and go.

use super::batch::{KnownStates, Write};
use super::decode::{self, to_i64, to_json};
use super::records::AgentRecord;
use super::{sql, Store, StoreError};
use shoes_vz_model::AgentId;
use sqlx::{Any, Transaction};

impl Store {
    /// Inserts the agent or overwrites every column of the existing row with `agent`.
    pub async fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.apply(&[Write::UpsertAgent(agent)], &mut KnownStates::default())
            .await
    }

    /// Unknown agents are [`StoreError::NotFound`]: they must register first.
    pub async fn set_agent_online(
        &self,
        id: &AgentId,
        online: bool,
        last_seen_ms: i64,
    ) -> Result<(), StoreError> {
        self.apply(
            &[Write::AgentOnline(id, online, last_seen_ms)],
            &mut KnownStates::default(),
        )
        .await
    }

    /// Every agent ever registered, oldest registration first.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(sql::LIST_AGENTS)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::query("list agents"))?;
        rows.iter().map(decode::agent).collect()
    }
}

/// [`Store::upsert_agent`] inside the caller's transaction.
pub(super) async fn upsert_in(
    tx: &mut Transaction<'static, Any>,
    agent: &AgentRecord,
) -> Result<(), StoreError> {
    sqlx::query(sql::UPSERT_AGENT)
        .bind(agent.agent_id.as_str())
        .bind(agent.hostname.as_str())
        .bind(agent.backend.as_str())
        .bind(i64::from(agent.max_runners))
        .bind(i64::from(agent.cpu_cores))
        .bind(to_i64("memory_mib", agent.memory_mib)?)
        .bind(to_json("templates", &agent.templates)?)
        .bind(i64::from(agent.online))
        .bind(agent.last_seen_ms)
        .bind(agent.registered_at_ms)
        .bind(agent.credential_hash.as_str())
        .bind(i64::from(agent.credential_confirmed))
        .bind(i64::from(agent.revoked))
        .bind(i64::from(agent.cordoned))
        .bind(agent.version.as_str())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("save an agent"))?;
    Ok(())
}

/// [`Store::set_agent_online`] inside the caller's transaction.
pub(super) async fn set_online_in(
    tx: &mut Transaction<'static, Any>,
    id: &AgentId,
    online: bool,
    last_seen_ms: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query(sql::SET_AGENT_ONLINE)
        .bind(id.as_str())
        .bind(i64::from(online))
        .bind(last_seen_ms)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("mark an agent online or offline"))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound {
            kind: "agent",
            id: id.to_string(),
        });
    }
    Ok(())
}
