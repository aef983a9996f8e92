//! Turning rows back into records, and records' unsigned values into portable i64s.
//! Anything that does not read back cleanly is [`StoreError::Corrupt`] naming table, row and column.

use super::error::StoreError;
use super::records::{AgentRecord, RunnerRecord, StateChange, Timings};
use serde::de::DeserializeOwned;
use shoes_vz_model::{AgentId, RunnerId};
use sqlx::any::AnyRow;
use sqlx::{Any, Decode, Row, Type};
use std::fmt::Display;
use std::str::FromStr;

/// u64 → i64 for storage; refuses what would wrap to negative.
pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::TooLarge { field, value })
}

pub(crate) fn opt_to_i64(
    field: &'static str,
    value: Option<u64>,
) -> Result<Option<i64>, StoreError> {
    value.map(|v| to_i64(field, v)).transpose()
}

pub(crate) fn to_json<T: serde::Serialize>(
    field: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { field, source })
}

/// A row being read, with what to call it in errors.
struct Reader<'a> {
    row: &'a AnyRow,
    table: &'static str,
    key: String,
}

impl<'a> Reader<'a> {
    /// `key_column` names the row in errors; read first so later errors can use it.
    fn new(row: &'a AnyRow, table: &'static str, key_column: &'static str) -> Self {
        let key = row
            .try_get::<String, _>(key_column)
            .unwrap_or_else(|_| "(unreadable key)".to_string());
        Self { row, table, key }
    }

    fn corrupt(&self, column: &'static str, reason: impl Display) -> StoreError {
        StoreError::Corrupt {
            table: self.table,
            column,
            row: self.key.clone(),
            reason: reason.to_string(),
        }
    }

    fn get<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: for<'r> Decode<'r, Any> + Type<Any>,
    {
        self.row
            .try_get(column)
            .map_err(|e| self.corrupt(column, e))
    }

    fn u32(&self, column: &'static str) -> Result<u32, StoreError> {
        let value: i64 = self.get(column)?;
        u32::try_from(value).map_err(|_| self.corrupt(column, format!("{value} is not a u32")))
    }

    fn u64(&self, column: &'static str) -> Result<u64, StoreError> {
        let value: i64 = self.get(column)?;
        u64::try_from(value).map_err(|_| self.corrupt(column, format!("{value} is negative")))
    }

    fn opt_u64(&self, column: &'static str) -> Result<Option<u64>, StoreError> {
        let value: Option<i64> = self.get(column)?;
        value
            .map(|v| u64::try_from(v).map_err(|_| self.corrupt(column, format!("{v} is negative"))))
            .transpose()
    }

    fn bool(&self, column: &'static str) -> Result<bool, StoreError> {
        match self.get::<i64>(column)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format!("{other} is neither 0 nor 1"))),
        }
    }

    fn json<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, StoreError> {
        let text: String = self.get(column)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, e))
    }

    fn parse<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let text: String = self.get(column)?;
        text.parse().map_err(|e| self.corrupt(column, e))
    }
}

pub(crate) fn agent(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let r = Reader::new(row, "agents", "agent_id");
    Ok(AgentRecord {
        agent_id: r.parse::<AgentIdText>("agent_id")?.0,
        hostname: r.get("hostname")?,
        backend: r.get("backend")?,
        max_runners: r.u32("max_runners")?,
        cpu_cores: r.u32("cpu_cores")?,
        memory_mib: r.u64("memory_mib")?,
        templates: r.json("templates_json")?,
        online: r.bool("online")?,
        last_seen_ms: r.get("last_seen_ms")?,
        registered_at_ms: r.get("registered_at_ms")?,
        credential_hash: r.get("credential_hash")?,
        credential_confirmed: r.bool("credential_confirmed")?,
        revoked: r.bool("revoked")?,
        cordoned: r.bool("cordoned")?,
        version: r.get("version")?,
    })
}

pub(crate) fn runner(row: &AnyRow) -> Result<RunnerRecord, StoreError> {
    let r = Reader::new(row, "runners", "runner_id");
    let runner_id = r.parse::<RunnerIdText>("runner_id")?.0;
    // The cloud_id column must agree with the id it was derived from.
    let cloud_id: String = r.get("cloud_id")?;
    if cloud_id != runner_id.cloud_id().as_str() {
        return Err(r.corrupt("cloud_id", format!("{cloud_id:?} does not match runner_id")));
    }
    Ok(RunnerRecord {
        runner_id,
        runner_name: r.get("runner_name")?,
        agent_id: r.parse::<AgentIdText>("agent_id")?.0,
        template: r.get("template")?,
        resource_type: r.parse("resource_type")?,
        vcpus: r.u32("vcpus")?,
        memory_mib: r.u64("memory_mib")?,
        labels: r.json("labels_json")?,
        state: r.parse("state")?,
        delete_requested: r.bool("delete_requested")?,
        answered: r.bool("answered")?,
        end_reason: r.get("end_reason")?,
        job_started_at_ms: r.get("job_started_at_ms")?,
        job_finished_at_ms: r.get("job_finished_at_ms")?,
        ip_address: r.get("ip_address")?,
        guest_runner_state: r.get("guest_runner_state")?,
        error: r.get("error")?,
        created_at_ms: r.get("created_at_ms")?,
        updated_at_ms: r.get("updated_at_ms")?,
        timings: Timings {
            clone_ms: r.opt_u64("clone_ms")?,
            boot_to_ip_ms: r.opt_u64("boot_to_ip_ms")?,
            boot_to_ssh_ms: r.opt_u64("boot_to_ssh_ms")?,
            setup_ms: r.opt_u64("setup_ms")?,
            startup_ms: r.opt_u64("startup_ms")?,
            queue_ms: r.opt_u64("queue_ms")?,
            prepare_ms: r.opt_u64("prepare_ms")?,
            vm_start_ms: r.opt_u64("vm_start_ms")?,
            refresh_ms: r.opt_u64("refresh_ms")?,
        },
    })
}

/// History rows are named "<runner_id> seq <n>" in errors.
pub(crate) fn state_change(row: &AnyRow, runner_id: &RunnerId) -> Result<StateChange, StoreError> {
    let mut r = Reader {
        row,
        table: "runner_history",
        key: runner_id.to_string(),
    };
    let seq: i64 = r.get("seq")?;
    r.key = format!("{runner_id} seq {seq}");
    Ok(StateChange {
        seq,
        state: r.parse("state")?,
        at_ms: r.get("at_ms")?,
        detail: r.get("detail")?,
    })
}

// The model's ids parse with `parse(&str)`, not `FromStr`; these adapt them for `Reader::parse`.
struct AgentIdText(AgentId);
struct RunnerIdText(RunnerId);

impl FromStr for AgentIdText {
    type Err = shoes_vz_model::IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentId::parse(s).map(Self)
    }
}

impl FromStr for RunnerIdText {
    type Err = shoes_vz_model::IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunnerId::parse(s).map(Self)
    }
}
