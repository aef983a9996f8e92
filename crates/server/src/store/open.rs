//! Connecting: the pool, SQLite's WAL and busy timeout, then migrations.

use super::error::redact_url;
use super::{migrate, Backend, Store, StoreError};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Connection};
use std::sync::Once;
use std::time::Duration;

/// How long (10 s) a SQLite writer waits for another before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 10000";

/// [`Store::open`] with an adjustable wait for the database to accept connections.
pub(super) async fn open(url: &str, timeout: Duration) -> Result<Store, StoreError> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);

    let shown = redact_url(url);
    let backend =
        Backend::from_url(url).ok_or_else(|| StoreError::UnsupportedUrl { url: shown.clone() })?;
    let open_error = |source| {
        StoreError::Open {
        url: shown.clone(),
        hint: match backend {
            Backend::Sqlite => "check that its directory exists and is writable, and add ?mode=rwc to create a new file",
            Backend::Postgres => "check the URL and credentials, and that the database server is up and reachable",
        },
        source,
    }
    };

    let pool = match connect(url, backend, timeout).await {
        Ok(pool) => pool,
        // The pool only says it timed out; one direct attempt names the real cause.
        Err(sqlx::Error::PoolTimedOut) => {
            let source = match AnyConnection::connect(url).await {
                Ok(_) => sqlx::Error::PoolTimedOut,
                Err(cause) => cause,
            };
            return Err(open_error(source));
        }
        Err(source) => return Err(open_error(source)),
    };

    if backend == Backend::Sqlite {
        // WAL lets readers run beside the writer; the mode is stored in the file, so once per
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

async fn connect(url: &str, backend: Backend, timeout: Duration) -> Result<AnyPool, sqlx::Error> {
    let options = AnyPoolOptions::new().acquire_timeout(timeout);
    match backend {
        // SQLite serialises writers anyway; a few connections let reads proceed meanwhile.
        Backend::Sqlite => {
            options
                .max_connections(4)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlx::query(SQLITE_BUSY_TIMEOUT).execute(&mut *conn).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await
        }
        Backend::Postgres => options.max_connections(10).connect(url).await,
    }
}
