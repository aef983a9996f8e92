//! Schema migrations: SQL files embedded at compile time, applied in order inside one
//! transaction and recorded in `schema_version`. Kept in-house (not `sqlx::migrate!`) so the
//! same files run unchanged through the Any driver on SQLite and PostgreSQL.

use super::error::StoreError;
use super::{now_ms, Backend, Store};

/// (version, SQL). Append only; never edit a released file, add a new one instead.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_initial.sql")),
    (
        2,
        include_str!("../../migrations/0002_claims_and_job_times.sql"),
    ),
    (
        3,
        include_str!("../../migrations/0003_agent_trust_and_cordon.sql"),
    ),
    (
        4,
        include_str!("../../migrations/0004_lean_runner_indexes.sql"),
    ),
    (
        5,
        include_str!("../../migrations/0005_start_step_timings.sql"),
    ),
];

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version \
     (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)";
const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_version";
const RECORD_VERSION: &str = "INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)";
/// Serialises servers migrating one PostgreSQL database at once (SQLite: BEGIN IMMEDIATE).
/// The key is arbitrary but fixed: "shoesvz" in ASCII.
const PG_LOCK: &str = "SELECT 1 FROM pg_advisory_xact_lock(32484449974449786)";

/// The newest schema version this build knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

pub(crate) async fn run(store: &Store, shown_url: &str) -> Result<(), StoreError> {
    let failed = |source| StoreError::Migrate {
        url: shown_url.to_string(),
        source,
    };
    let mut tx = store.begin_write().await?;
    if store.backend == Backend::Postgres {
        sqlx::query(PG_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
    }
    sqlx::query(CREATE_VERSION_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
    let current: i64 = sqlx::query_scalar(CURRENT_VERSION)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    if current > latest() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: latest(),
        });
    }
    for (version, migration) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tracing::info!(url = shown_url, version, "applying state store migration");
        // raw_sql: a file holds several statements, which prepared queries cannot.
        sqlx::raw_sql(*migration)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(RECORD_VERSION)
            .bind(*version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)
}
