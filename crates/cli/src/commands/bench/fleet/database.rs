//! The server's state store for one bench run, always fresh: SQLite in the run's temp dir, or
//! a new schema in the given PostgreSQL database (the server reaches it through
//! `search_path`), dropped when the run ends.

use sqlx::Connection;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("--database-url must be a postgres:// URL (without it the bench uses a fresh SQLite file in its temp dir)")]
    Unsupported,
    #[error("cannot connect to PostgreSQL at {shown}; check the URL, the credentials and that the server is up")]
    Connect {
        shown: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PostgreSQL at {shown} did not answer within {0:?}", TIMEOUT)]
    Timeout { shown: String },
    #[error("PostgreSQL at {shown} refused `{statement}` (the bench's schema needs CREATE on the database)")]
    Statement {
        shown: String,
        statement: String,
        #[source]
        source: sqlx::Error,
    },
}

const TIMEOUT: Duration = Duration::from_secs(15);

pub enum Database {
    Sqlite {
        url: String,
    },
    Postgres {
        /// The given URL (it may carry a password: never shown).
        base: String,
        /// `base` with `search_path` set to `schema`: what the server gets.
        url: String,
        schema: String,
    },
}

impl Database {
    /// SQLite in `dir` without `database_url`; else a new schema in that PostgreSQL database.
    pub async fn prepare(
        database_url: Option<&str>,
        dir: &Path,
    ) -> Result<Database, DatabaseError> {
        let Some(base) = database_url else {
            return Ok(Database::Sqlite {
                url: format!("sqlite://{}?mode=rwc", dir.join("state.db").display()),
            });
        };
        if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
            return Err(DatabaseError::Unsupported);
        }
        let schema = format!(
            "shoesvz_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        run(base, &format!("CREATE SCHEMA {schema}")).await?;
        Ok(Database::Postgres {
            url: with_search_path(base, &schema),
            base: base.to_string(),
            schema,
        })
    }

    /// What the server's `database_url` is set to (may hold a password: never print it).
    pub fn url(&self) -> &str {
        match self {
            Database::Sqlite { url } | Database::Postgres { url, .. } => url,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite { .. } => "SQLite (a new file in the run's temp dir)".to_string(),
            Database::Postgres { base, schema, .. } => {
                format!(
                    "PostgreSQL {} (new schema {schema}, dropped after the run)",
                    redact(base)
                )
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite { .. } => "sqlite",
            Database::Postgres { .. } => "postgres",
        }
    }

    /// Drops the run's PostgreSQL schema; a failure is printed, not fatal (the numbers stand).
    pub async fn clean_up(&self) {
        if let Database::Postgres { base, schema, .. } = self {
            // Quiet: PostgreSQL otherwise sends a notice per dropped table.
            let drop = format!(
                "SET client_min_messages = warning; DROP SCHEMA IF EXISTS {schema} CASCADE"
            );
            if let Err(error) = run(base, &drop).await {
                eprintln!(
                    "warning: could not drop the bench's schema {schema} ({}); drop it by hand",
                    crate::commands::bench::fleet::error_chain(&error)
                );
            }
        }
    }
}

async fn run(url: &str, statement: &str) -> Result<(), DatabaseError> {
    let shown = redact(url);
    let work = async {
        let mut connection =
            sqlx::postgres::PgConnection::connect(url)
                .await
                .map_err(|source| DatabaseError::Connect {
                    shown: shown.clone(),
                    source,
                })?;
        // Safe: the only variable part is the schema name this module generated (hex).
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut connection)
            .await
            .map_err(|source| DatabaseError::Statement {
                shown: shown.clone(),
                statement: statement.to_string(),
                source,
            })?;
        let _ = connection.close().await;
        Ok(())
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| DatabaseError::Timeout {
            shown: shown.clone(),
        })?
}

/// `url` with the server's connections confined to `schema` (sqlx's `options[…]` parameter).
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options%5Bsearch_path%5D={schema}")
}

/// `scheme://user@host/db`: without the password and the query (which may hold one too).
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split('?').next().unwrap_or(rest);
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_url_has_no_password() {
        assert_eq!(
            redact("postgres://shoesvz:s3cret@127.0.0.1:5432/shoesvz_test?password=x"),
            "postgres://shoesvz@127.0.0.1:5432/shoesvz_test"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn the_server_is_confined_to_the_runs_schema() {
        assert_eq!(
            with_search_path("postgres://u:p@h/db", "shoesvz_bench_1"),
            "postgres://u:p@h/db?options%5Bsearch_path%5D=shoesvz_bench_1"
        );
        assert_eq!(
            with_search_path("postgres://h/db?sslmode=disable", "s"),
            "postgres://h/db?sslmode=disable&options%5Bsearch_path%5D=s"
        );
    }

    #[tokio::test]
    async fn only_postgres_urls_are_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = Database::prepare(Some("mysql://x/y"), dir.path()).await;
        assert!(matches!(error, Err(DatabaseError::Unsupported)));
        let sqlite = Database::prepare(None, dir.path()).await.expect("sqlite");
        assert!(sqlite.url().starts_with("sqlite://"), "{}", sqlite.url());
        assert!(
            sqlite.url().ends_with("state.db?mode=rwc"),
            "{}",
            sqlite.url()
        );
    }
}
