//! The server's durable state: agents, runners (with the cloud_id → runner mapping) and each
//! runner's state history, in SQLite or PostgreSQL through sqlx's Any driver.
//!
//! # Layout
//! - `records`: the record types callers read and write (re-exported here).
//! - `agents`, `runners`: the [`Store`] methods for each table.
//! - `batch`: several writes in one transaction ([`Store::apply`]), as the server's writer
//!   commits them; `plan`: the fewest statements for them.
//! - `open`: connecting (pool, SQLite pragmas).
//! - `migrate`: the embedded schema (`crates/server/migrations/*.sql`) and its version table.
//! - `sql`, `decode`: statements, and rows back into records.
//!
//! Only portable column types are used (BIGINT, TEXT), so one schema serves both databases.

mod agents;
mod batch;
mod decode;
mod error;
mod migrate;
mod open;
mod plan;
mod records;
mod runners;
mod sql;
#[cfg(test)]
mod tests;

pub use batch::{KnownStates, Write};
pub use error::StoreError;
pub use records::{AgentRecord, NewRunner, RunnerRecord, StateChange, TemplateRecord, Timings};

use sqlx::{Any, AnyPool, Transaction};
use std::time::Duration;

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
pub use shoes_vz_model::clock::now_ms;

impl Store {
    /// Connects to `url` (`sqlite:///abs/path/state.db?mode=rwc` or `postgres://…`) and
    /// brings the schema up to date. Waits up to 30 s for a database that is still starting.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        open::open(url, Duration::from_secs(30)).await
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
