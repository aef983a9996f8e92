//! Configuration from the environment myshoes passes to its plugin (it inherits myshoes' own).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SHOESVZ_SERVER_ADDR` | shoes-vz server: `host:port`, `http://…` or `https://…` | required |
//! | `SHOESVZ_TOKEN` | the server's API token | required |
//! | `SHOESVZ_TLS_CA` | PEM file of the CA that signed the server's certificate; implies TLS | unset |
//! | `SHOESVZ_PLUGIN_CONNECT_TIMEOUT` | one connection attempt | `5s` |
//! | `SHOESVZ_PLUGIN_ADD_TIMEOUT` | whole AddInstance call (myshoes gives 5m) | `4m50s` |
//! | `SHOESVZ_PLUGIN_DELETE_TIMEOUT` | whole DeleteInstance call (myshoes gives 3m) | `2m50s` |

use shoes_vz_protocol::client::{self, ConnectOptions};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const SERVER_ADDR: &str = "SHOESVZ_SERVER_ADDR";
pub const TOKEN: &str = "SHOESVZ_TOKEN";
pub const TLS_CA: &str = "SHOESVZ_TLS_CA";
pub const CONNECT_TIMEOUT: &str = "SHOESVZ_PLUGIN_CONNECT_TIMEOUT";
pub const ADD_TIMEOUT: &str = "SHOESVZ_PLUGIN_ADD_TIMEOUT";
pub const DELETE_TIMEOUT: &str = "SHOESVZ_PLUGIN_DELETE_TIMEOUT";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Under myshoes' 5 minutes, so the answer (even a timeout) arrives before myshoes gives up.
const DEFAULT_ADD_TIMEOUT: Duration = Duration::from_secs(4 * 60 + 50);
/// Under myshoes' 3 minutes.
const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(2 * 60 + 50);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set; set it in myshoes' environment")]
    Missing(&'static str),
    #[error("{SERVER_ADDR}={0:?} is not a valid address: use host:port, http://host:port or https://host:port")]
    BadAddress(String),
    #[error("{TOKEN} contains characters that cannot go in a header; use a printable ASCII token")]
    BadToken,
    #[error("{TLS_CA} is set but {SERVER_ADDR} uses http://; use https:// or a bare host:port")]
    PlaintextWithCa,
    #[error("cannot read {TLS_CA} file {path}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{TLS_CA} file {0} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NotPem(PathBuf),
    #[error("invalid TLS settings from {TLS_CA}")]
    Tls(#[source] client::ClientError),
    #[error("{var}={value:?} is not a duration; use e.g. \"30s\" or \"4m50s\"")]
    BadDuration {
        var: &'static str,
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("{0} must be more than zero")]
    ZeroDuration(&'static str),
}

/// The API token; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub server_addr: String,
    pub token: Token,
    pub tls_ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub add_timeout: Duration,
    pub delete_timeout: Duration,
}

impl PluginConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads and validates everything, so a bad setting fails before the handshake instead of
    /// on every call.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| env(key).filter(|value| !value.trim().is_empty());
        let server_addr = get(SERVER_ADDR)
            .ok_or(ConfigError::Missing(SERVER_ADDR))?
            .trim()
            .to_string();
        let token = get(TOKEN).ok_or(ConfigError::Missing(TOKEN))?;
        client::bearer(&token).map_err(|_| ConfigError::BadToken)?;
        let tls_ca_pem = match get(TLS_CA) {
            Some(path) => Some(read_ca(PathBuf::from(path))?),
            None => None,
        };
        if tls_ca_pem.is_some() && server_addr.starts_with("http://") {
            return Err(ConfigError::PlaintextWithCa);
        }
        let duration = |var: &'static str, default: Duration| match get(var) {
            None => Ok(default),
            Some(value) => match humantime::parse_duration(value.trim()) {
                Ok(d) if d.is_zero() => Err(ConfigError::ZeroDuration(var)),
                Ok(d) => Ok(d),
                Err(source) => Err(ConfigError::BadDuration { var, value, source }),
            },
        };
        let config = PluginConfig {
            server_addr,
            token: Token(token),
            tls_ca_pem,
            connect_timeout: duration(CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)?,
            add_timeout: duration(ADD_TIMEOUT, DEFAULT_ADD_TIMEOUT)?,
            delete_timeout: duration(DELETE_TIMEOUT, DEFAULT_DELETE_TIMEOUT)?,
        };
        // Builds (does not connect) the endpoint: catches malformed addresses now.
        client::endpoint(&config.server_addr, &config.connect_options()).map_err(|error| {
            match error {
                client::ClientError::BadAddress(_) => {
                    ConfigError::BadAddress(config.server_addr.clone())
                }
                other => ConfigError::Tls(other),
            }
        })?;
        Ok(config)
    }

    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            tls_ca_pem: self.tls_ca_pem.clone(),
            connect_timeout: Some(self.connect_timeout),
        }
    }
}

fn read_ca(path: PathBuf) -> Result<Vec<u8>, ConfigError> {
    match std::fs::read(&path) {
        Ok(pem) if contains(&pem, b"-----BEGIN CERTIFICATE-----") => Ok(pem),
        Ok(_) => Err(ConfigError::NotPem(path)),
        Err(source) => Err(ConfigError::ReadCa { path, source }),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<PluginConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PluginConfig::from_lookup(|key| map.get(key).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        (SERVER_ADDR, "127.0.0.1:50051"),
        (TOKEN, "test-token-0123456789"),
    ];

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut pairs = BASE.to_vec();
        pairs.extend_from_slice(extra);
        pairs
    }

    #[test]
    fn defaults_leave_room_under_myshoes_deadlines() {
        let config = load(&BASE).expect("valid");
        assert_eq!(config.server_addr, "127.0.0.1:50051");
        assert_eq!(config.token.expose(), "test-token-0123456789");
        assert!(config.tls_ca_pem.is_none());
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert!(config.add_timeout < Duration::from_secs(300));
        assert!(config.delete_timeout < Duration::from_secs(180));
    }

    #[test]
    fn address_and_token_are_required() {
        assert!(matches!(
            load(&[(TOKEN, "t")]),
            Err(ConfigError::Missing(SERVER_ADDR))
        ));
        assert!(matches!(
            load(&[(SERVER_ADDR, "127.0.0.1:1"), (TOKEN, "  ")]),
            Err(ConfigError::Missing(TOKEN))
        ));
        let message = load(&[]).expect_err("missing").to_string();
        assert!(message.contains(SERVER_ADDR), "{message}");
    }

    #[test]
    fn malformed_values_are_refused_with_the_variable_named() {
        let bad_addr = load(&[(SERVER_ADDR, "http://exa mple:1"), (TOKEN, "t")]);
        assert!(
            matches!(bad_addr, Err(ConfigError::BadAddress(_))),
            "{bad_addr:?}"
        );
        assert!(matches!(
            load(&[(SERVER_ADDR, "127.0.0.1:1"), (TOKEN, "a\nb")]),
            Err(ConfigError::BadToken)
        ));
        let bad_duration = load(&with(&[(ADD_TIMEOUT, "five minutes")]));
        let message = bad_duration.expect_err("bad").to_string();
        assert!(message.contains(ADD_TIMEOUT), "{message}");
        assert!(matches!(
            load(&with(&[(DELETE_TIMEOUT, "0s")])),
            Err(ConfigError::ZeroDuration(DELETE_TIMEOUT))
        ));
    }

    #[test]
    fn durations_are_humantime() {
        let config = load(&with(&[
            (CONNECT_TIMEOUT, "250ms"),
            (ADD_TIMEOUT, "2m"),
            (DELETE_TIMEOUT, "1m 30s"),
        ]))
        .expect("valid");
        assert_eq!(config.connect_timeout, Duration::from_millis(250));
        assert_eq!(config.add_timeout, Duration::from_secs(120));
        assert_eq!(config.delete_timeout, Duration::from_secs(90));
    }

    #[test]
    fn tls_ca_must_be_a_readable_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().expect("utf-8");
        assert!(matches!(
            load(&with(&[(TLS_CA, missing)])),
            Err(ConfigError::ReadCa { .. })
        ));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let junk = junk.to_str().expect("utf-8");
        assert!(matches!(
            load(&with(&[(TLS_CA, junk)])),
            Err(ConfigError::NotPem(_))
        ));
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let pem = pem.to_str().expect("utf-8");
        assert!(matches!(
            load(&[
                (SERVER_ADDR, "http://127.0.0.1:1"),
                (TOKEN, "t"),
                (TLS_CA, pem)
            ]),
            Err(ConfigError::PlaintextWithCa)
        ));
        let config = load(&with(&[(TLS_CA, pem)])).expect("valid");
        assert!(config.tls_ca_pem.is_some());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = load(&BASE).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("test-token-0123456789"), "{debug}");
    }
}
