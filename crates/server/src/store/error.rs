//! Store errors. Messages name what failed and what to do; URLs never carry a password.

/// What can go wrong talking to the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store URL {url} is not supported: use sqlite:///path/to/state.db?mode=rwc or postgres://user@host/db")]
    UnsupportedUrl { url: String },

    #[error("cannot open the state store at {url}: {hint}")]
    Open {
        url: String,
        hint: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error("cannot bring the state store schema at {url} up to date: check that the database user may create tables")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("the state store schema is version {found}, newer than the {supported} this server knows: run a newer shoes-vz-server or use another database")]
    SchemaTooNew { found: i64, supported: i64 },

    #[error(
        "the state store failed to {action}: check that the database is reachable and has space"
    )]
    Query {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error("{what} is already in the state store: generate a new id instead of reusing one")]
    Conflict {
        what: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("{kind} {id} is not in the state store: register or create it first")]
    NotFound { kind: &'static str, id: String },

    #[error("the state store row {table} {row} has an unreadable {column}: {reason}; fix or delete that row")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        row: String,
        reason: String,
    },

    #[error("cannot store {field} = {value}: the state store holds integers only up to {max}", max = i64::MAX)]
    TooLarge { field: &'static str, value: u64 },

    #[error("cannot encode {field} as JSON for the state store")]
    Encode {
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Wraps a failed statement as [`StoreError::Query`].
    pub(crate) fn query(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Query { action, source }
    }

    /// Like [`Self::query`], but a unique-key violation becomes [`StoreError::Conflict`]
    /// naming `what`.
    pub(crate) fn insert(
        action: &'static str,
        what: String,
    ) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| {
            let unique = source
                .as_database_error()
                .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation);
            if unique {
                StoreError::Conflict { what, source }
            } else {
                StoreError::Query { action, source }
            }
        }
    }
}

/// `url` with any password (userinfo or `password=` parameter) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => authority.to_string(),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://shoes:s3cret@db:5432/shoes?sslmode=require&password=x"),
            "postgres://shoes:***@db:5432/shoes?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://shoes@db/shoes"),
            "postgres://shoes@db/shoes"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/shoes-vz/state.db?mode=rwc"),
            "sqlite:///var/lib/shoes-vz/state.db?mode=rwc"
        );
        assert_eq!(redact_url("postgres://u:p@w@h/db"), "postgres://u:***@h/db");
    }
}
