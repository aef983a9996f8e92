//! The server's durable state: agents, runners (with the cloud_id → runner mapping) and each
//! runner's state history, in SQLite or PostgreSQL through sqlx's Any driver.
//!
//! # Layout
//! - [`records`]: the record types callers read and write.
//! - `agents`, `runners`: the [`Store`] methods for each table.
//! - `migrate`: the embedded schema (`crates/server/migrations/*.sql`) and its version table.
//! - `sql`, `decode`: statements, and rows back into records.
//!
//! Only portable column types are used (BIGINT, TEXT), so one schema serves both databases.

mod agents;
mod decode;
mod error;
mod migrate;
pub mod records;
mod runners;
mod sql;
#[cfg(test)]
mod tests;

pub use error::StoreError;
pub use records::{AgentRecord, RunnerRecord, StateChange, TemplateRecord, Timings};

use error::redact_url;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long (10 s) a SQLite writer waits for another before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 10000";

/// Handle to the state store; cheap to clone (shares one connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Where the few non-portable bits (locking, pragmas) differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn from_url(url: &str) -> Option<Backend> {
        let scheme = url.split(':').next()?.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch, the store's timestamp unit.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Store {
    /// Connects to `url` (`sqlite:///abs/path/state.db?mode=rwc` or `postgres://…`) and
    /// brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let shown = redact_url(url);
        let backend = Backend::from_url(url)
            .ok_or_else(|| StoreError::UnsupportedUrl { url: shown.clone() })?;
        let open_error = |source| StoreError::Open {
            url: shown.clone(),
            source,
        };

        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let pool = match backend {
            // SQLite serialises writers anyway; a few connections let reads proceed meanwhile.
            Backend::Sqlite => options
                .max_connections(4)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlx::query(SQLITE_BUSY_TIMEOUT).execute(&mut *conn).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await
                .map_err(open_error)?,
            Backend::Postgres => options
                .max_connections(10)
                .connect(url)
                .await
                .map_err(open_error)?,
        };

        if backend == Backend::Sqlite {
            // WAL lets readers run beside the writer; it is persistent, so setting it once per
            // open is enough.
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&pool)
                .await
                .map_err(open_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(url = %shown, mode, "state store could not switch SQLite to WAL; concurrent access will be slower");
            }
        }

        let store = Store { pool, backend };
        migrate::run(&store, &shown).await?;
        Ok(store)
    }

    /// Starts a transaction that will write. SQLite takes the write lock up front (so the
    /// busy timeout applies instead of failing on a read-to-write upgrade).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let begun = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        };
        begun.map_err(StoreError::query("start a transaction"))
    }
}
