//! Runners and their state history. Every write that changes `state` appends a history row
//! in the same transaction, so the two never disagree.

use super::batch::{KnownStates, Write};
use super::decode::{self, opt_to_i64, to_i64, to_json};
use super::plan::{HistoryRow, Stored};
use super::records::{RunnerRecord, StateChange};
use super::{sql, Backend, Store, StoreError};
use shoes_vz_model::{RunnerId, RunnerState};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Transaction};

type AnyQuery<'a> = Query<'a, Any, AnyArguments>;

/// A runner's values converted to what the columns hold, checked before any statement runs.
struct Columns {
    memory_mib: i64,
    labels_json: String,
    timings: [Option<i64>; 5],
    queue_ms: Option<i64>,
    steps: [Option<i64>; 3],
}

impl Columns {
    fn of(runner: &RunnerRecord) -> Result<Columns, StoreError> {
        let t = &runner.timings;
        Ok(Columns {
            memory_mib: to_i64("memory_mib", runner.memory_mib)?,
            labels_json: to_json("labels", &runner.labels)?,
            timings: [
                opt_to_i64("clone_ms", t.clone_ms)?,
                opt_to_i64("boot_to_ip_ms", t.boot_to_ip_ms)?,
                opt_to_i64("boot_to_ssh_ms", t.boot_to_ssh_ms)?,
                opt_to_i64("setup_ms", t.setup_ms)?,
                opt_to_i64("startup_ms", t.startup_ms)?,
            ],
            queue_ms: opt_to_i64("queue_ms", t.queue_ms)?,
            steps: [
                opt_to_i64("prepare_ms", t.prepare_ms)?,
                opt_to_i64("vm_start_ms", t.vm_start_ms)?,
                opt_to_i64("refresh_ms", t.refresh_ms)?,
            ],
        })
    }

    /// Binds the mutable columns, in `runner_columns!` order after the identity ones.
    fn bind_mutable<'a>(&self, query: AnyQuery<'a>, runner: &RunnerRecord) -> AnyQuery<'a> {
        let query = query
            .bind(runner.runner_name.as_str())
            .bind(runner.agent_id.as_str())
            .bind(runner.template.as_str())
            .bind(runner.resource_type.as_str())
            .bind(i64::from(runner.vcpus))
            .bind(self.memory_mib)
            .bind(self.labels_json.as_str())
            .bind(runner.state.as_str())
            .bind(i64::from(runner.delete_requested))
            .bind(runner.ip_address.as_str())
            .bind(runner.guest_runner_state.as_str())
            .bind(runner.error.as_str())
            .bind(runner.updated_at_ms);
        let query = self
            .timings
            .iter()
            .fold(query, |q, t| q.bind(*t))
            .bind(i64::from(runner.answered))
            .bind(runner.end_reason.as_str())
            .bind(runner.job_started_at_ms)
            .bind(runner.job_finished_at_ms)
            .bind(self.queue_ms);
        self.steps.iter().fold(query, |q, t| q.bind(*t))
    }
}

impl Store {
    /// Adds a new runner and its first history entry. A runner_id or cloud_id already
    /// present is [`StoreError::Conflict`].
    pub async fn insert_runner(&self, runner: &RunnerRecord) -> Result<(), StoreError> {
        self.apply(&[Write::InsertRunner(runner)], &mut KnownStates::default())
            .await
    }

    /// Overwrites the runner's mutable columns; appends a history entry if `state` differs
    /// from the stored one. An unknown runner is [`StoreError::NotFound`].
    pub async fn update_runner(&self, runner: &RunnerRecord) -> Result<(), StoreError> {
        self.apply(&[Write::UpdateRunner(runner)], &mut KnownStates::default())
            .await
    }

    /// Removes up to `limit` deleted runners created before `created_before_ms`, with their
    /// history (runners myshoes may still release are kept). Returns how many went.
    pub async fn prune_deleted(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let query = |statement| {
            sqlx::query(statement)
                .bind(created_before_ms)
                .bind(RunnerState::Deleted.as_str())
                .bind(i64::from(limit))
        };
        let mut tx = self.begin_write().await?;
        query(sql::PRUNE_HISTORY)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("prune deleted runners' history"))?;
        let pruned = query(sql::PRUNE_RUNNERS)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query("prune deleted runners"))?;
        tx.commit()
            .await
            .map_err(StoreError::query("commit pruning"))?;
        Ok(pruned.rows_affected())
    }

    pub async fn get_runner(&self, id: &RunnerId) -> Result<Option<RunnerRecord>, StoreError> {
        let row = sqlx::query(sql::GET_RUNNER)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::query("read a runner"))?;
        row.as_ref().map(decode::runner).transpose()
    }

    /// Runners oldest first; deleted ones only when `include_deleted`.
    pub async fn list_runners(
        &self,
        include_deleted: bool,
    ) -> Result<Vec<RunnerRecord>, StoreError> {
        let query = if include_deleted {
            sqlx::query(sql::LIST_RUNNERS)
        } else {
            sqlx::query(sql::LIST_LIVE_RUNNERS).bind(RunnerState::Deleted.as_str())
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::query("list runners"))?;
        rows.iter().map(decode::runner).collect()
    }

    /// Up to `limit` runners after `after` (created_at_ms, runner_id), in that order: a page
    /// of the whole history that costs the same wherever it starts.
    pub async fn list_runners_page(
        &self,
        after: Option<(i64, &RunnerId)>,
        limit: u32,
    ) -> Result<Vec<RunnerRecord>, StoreError> {
        let (at, id) = after.map_or((i64::MIN, ""), |(at, id)| (at, id.as_str()));
        let rows = sqlx::query(sql::LIST_RUNNERS_PAGE)
            .bind(at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::query("list runners"))?;
        rows.iter().map(decode::runner).collect()
    }

    /// Live runners and those ended on their own that myshoes has not deleted yet, oldest
    /// first: what a starting server keeps in memory.
    pub async fn list_unreleased_runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows = sqlx::query(sql::LIST_UNRELEASED_RUNNERS)
            .bind(RunnerState::Deleted.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::query("list runners"))?;
        rows.iter().map(decode::runner).collect()
    }

    /// The runner's states in the order it went through them (empty for an unknown runner).
    pub async fn history(&self, id: &RunnerId) -> Result<Vec<StateChange>, StoreError> {
        let rows = sqlx::query(sql::HISTORY)
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::query("read a runner's history"))?;
        rows.iter()
            .map(|row| decode::state_change(row, id))
            .collect()
    }
}

/// Runners per INSERT: 26 values each stays far below both databases' parameter limits.
const INSERT_CHUNK: usize = 500;
/// History rows per INSERT (5 values each).
const HISTORY_CHUNK: usize = 2000;

/// Inserts `runners` (new ones, as their last record) in the caller's transaction. A runner_id
/// or cloud_id already present is [`StoreError::Conflict`].
pub(super) async fn insert_all(
    tx: &mut Transaction<'static, Any>,
    runners: &[&RunnerRecord],
) -> Result<(), StoreError> {
    for chunk in runners.chunks(INSERT_CHUNK) {
        let columns = chunk
            .iter()
            .map(|runner| Columns::of(runner))
            .collect::<Result<Vec<_>, _>>()?;
        // Built from the column list and placeholder numbers only: no value reaches the text.
        let statement = sqlx::AssertSqlSafe(sql::insert_runners(chunk.len()));
        let mut query = sqlx::query(statement);
        for (runner, columns) in chunk.iter().zip(&columns) {
            query = columns.bind_mutable(
                query
                    .bind(runner.runner_id.as_str())
                    .bind(runner.cloud_id().to_string())
                    .bind(runner.created_at_ms),
                runner,
            );
        }
        let what = match chunk {
            [one] => format!("runner {} (cloud_id {})", one.runner_id, one.cloud_id()),
            many => format!("one of {} runners", many.len()),
        };
        query
            .execute(&mut **tx)
            .await
            .map_err(StoreError::insert("insert runners", what))?;
    }
    Ok(())
}

/// Overwrites a stored runner's mutable columns in the caller's transaction. An unknown runner
/// is [`StoreError::NotFound`].
pub(super) async fn update_in(
    tx: &mut Transaction<'static, Any>,
    runner: &RunnerRecord,
) -> Result<(), StoreError> {
    let columns = Columns::of(runner)?;
    let query = sqlx::query(sql::UPDATE_RUNNER).bind(runner.runner_id.as_str());
    let done = columns
        .bind_mutable(query, runner)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::query("update a runner"))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound {
            kind: "runner",
            id: runner.runner_id.to_string(),
        });
    }
    Ok(())
}

/// What the store holds for a runner: its state and its history's last number (locked on
/// PostgreSQL until the transaction ends). An unknown runner is [`StoreError::NotFound`].
pub(super) async fn read_stored(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    id: &RunnerId,
) -> Result<Stored, StoreError> {
    let statement = match backend {
        Backend::Sqlite => sql::RUNNER_STATE_SQLITE,
        Backend::Postgres => sql::RUNNER_STATE_POSTGRES,
    };
    let state: Option<String> = sqlx::query_scalar(statement)
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::query("read a runner's state"))?;
    let state = state.ok_or_else(|| StoreError::NotFound {
        kind: "runner",
        id: id.to_string(),
    })?;
    let last_seq: i64 = sqlx::query_scalar(sql::LAST_HISTORY_SEQ)
        .bind(id.as_str())
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::query("read a runner's history"))?;
    Ok(Stored {
        state: state.parse().ok(),
        last_seq,
    })
}

/// Appends history rows (numbered by the caller) in the caller's transaction.
pub(super) async fn append_history(
    tx: &mut Transaction<'static, Any>,
    rows: &[HistoryRow<'_>],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(HISTORY_CHUNK) {
        // Placeholder numbers only: no value reaches the text.
        let statement = sqlx::AssertSqlSafe(sql::append_history(chunk.len()));
        let mut query = sqlx::query(statement);
        for row in chunk {
            query = query
                .bind(row.runner_id.as_str())
                .bind(row.seq)
                .bind(row.state.as_str())
                .bind(row.at_ms)
                .bind(row.detail);
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(StoreError::query("record runners' state changes"))?;
    }
    Ok(())
}
