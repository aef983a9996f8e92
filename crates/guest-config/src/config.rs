//! [`GuestConfig`]: everything one runner's guest needs to know, as the JSON file stored on
//! its config disk.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secret::{ApiToken, OpenSshPrivateKey};

/// The only format this build reads and writes. A guest refuses other versions rather than
/// guessing, so bump it whenever a field's meaning changes.
pub const FORMAT_VERSION: u32 = 1;
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
/// Bounds what the guest reads from the disk before parsing.
pub const MAX_CONFIG_JSON_BYTES: usize = 64 * 1024;
pub const RUNNER_ID_MAX_LEN: usize = 128;
pub const USER_NAME_MAX_LEN: usize = 32;
pub const PUBLIC_KEY_MAX_LEN: usize = 8 * 1024;
pub const URL_MAX_LEN: usize = 2048;
pub const PATH_MAX_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the guest config has format version {found}, but this runner-agent reads version {FORMAT_VERSION}; install a matching runner-agent in the template")]
    UnsupportedVersion { found: u32 },
    /// serde's own message is not used: it can quote a value, and values here are secrets.
    #[error("the guest config is not valid JSON for format version {FORMAT_VERSION} ({category} error at line {line}, column {column})")]
    Json {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("the guest config is {len} bytes; at most {MAX_CONFIG_JSON_BYTES} are allowed")]
    TooLarge { len: usize },
    #[error("guest config field `{field}` is invalid: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl ConfigError {
    pub(crate) fn from_json(err: &serde_json::Error) -> ConfigError {
        let category = match err.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "unexpected end",
        };
        ConfigError::Json {
            category,
            line: err.line(),
            column: err.column(),
        }
    }
}

/// One runner's identity and secrets, written by the agent (host) and read by the
/// runner-agent (guest) at boot and on `/refresh`.
///
/// `Debug` is safe to log: the token and the private key print as `<redacted>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// Always [`FORMAT_VERSION`] when written by this build.
    pub version: u32,
    /// The host's runner id (`[A-Za-z0-9._-]`, at most [`RUNNER_ID_MAX_LEN`]); the notify
    /// carries it and the host's verifier matches it to exactly one runner.
    pub runner_id: String,
    /// Bearer token for `/status`, `/exec`, `/refresh`; HMAC key for the notify.
    pub api_token: ApiToken,
    /// Where the guest POSTs its signed notify, e.g. `http://192.168.64.1:8081/v1/notify`.
    pub notify_url: String,
    /// The guest user whose `~/.ssh/authorized_keys` gets [`Self::ssh_authorized_key`].
    pub ssh_user: String,
    /// One public key line (`ssh-ed25519 AAAA…`), no options, no newline.
    pub ssh_authorized_key: String,
    /// The guest's SSH host key (OpenSSH private key text), installed for sshd.
    pub ssh_host_key: OpenSshPrivateKey,
    /// The public half of `ssh_host_key` as one line; the host pins it.
    pub ssh_host_public_key: String,
    /// Where the runner-agent serves HTTP (a `--listen` flag overrides it).
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// The GitHub Actions runner's directory (`.runner`, `_diag/`), an absolute path.
    pub runner_dir: PathBuf,
    /// The host's clock (Unix ms) when it wrote this config. A guest whose clock is behind
    /// it (e.g. restored from a saved state) moves its clock forward to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_time_ms: Option<u64>,
}

pub fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

/// The vsock port where a macOS guest's runner-agent serves the same API to the host alone
/// (vz's private channel: the warm-restore refresh goes there, never over the network). Not
/// 8080: tart-guest-agent listens there in Cirrus Labs images (tart ControlSocket.swift).
pub const VSOCK_PORT: u32 = 52080;

impl GuestConfig {
    /// Checks every field; [`from_json`](Self::from_json) and the image writer call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason| Err(ConfigError::Invalid { field, reason });
        if self.version != FORMAT_VERSION {
            return Err(ConfigError::UnsupportedVersion {
                found: self.version,
            });
        }
        if !is_valid_name(&self.runner_id, RUNNER_ID_MAX_LEN) {
            return invalid(
                "runner_id",
                "use 1-128 of A-Z a-z 0-9 . _ -, not starting with . or -",
            );
        }
        if !is_valid_url(&self.notify_url) {
            return invalid(
                "notify_url",
                "must be an http:// or https:// URL without spaces, at most 2048 characters",
            );
        }
        if !is_valid_name(&self.ssh_user, USER_NAME_MAX_LEN) {
            return invalid(
                "ssh_user",
                "use 1-32 of A-Z a-z 0-9 . _ -, not starting with . or -",
            );
        }
        if !is_valid_public_key_line(&self.ssh_authorized_key) {
            return invalid(
                "ssh_authorized_key",
                "must be one OpenSSH public key line (\"ssh-ed25519 AAAA…\") without options",
            );
        }
        if !is_valid_public_key_line(&self.ssh_host_public_key) {
            return invalid(
                "ssh_host_public_key",
                "must be one OpenSSH public key line (\"ssh-ed25519 AAAA…\")",
            );
        }
        if !is_valid_absolute_path(&self.runner_dir) {
            return invalid(
                "runner_dir",
                "must be an absolute path without `..`, at most 1024 bytes",
            );
        }
        Ok(())
    }

    /// The file stored on the config disk. Holds secrets: wiped when dropped.
    pub fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
        self.validate()?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| ConfigError::from_json(&e))?;
        if json.len() > MAX_CONFIG_JSON_BYTES {
            return Err(ConfigError::TooLarge { len: json.len() });
        }
        Ok(Zeroizing::new(json))
    }

    /// Parses and validates; a different `version` is refused before anything else.
    pub fn from_json(json: &[u8]) -> Result<GuestConfig, ConfigError> {
        if json.len() > MAX_CONFIG_JSON_BYTES {
            return Err(ConfigError::TooLarge { len: json.len() });
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let VersionOnly { version } =
            serde_json::from_slice(json).map_err(|e| ConfigError::from_json(&e))?;
        if version != FORMAT_VERSION {
            return Err(ConfigError::UnsupportedVersion { found: version });
        }
        let config: GuestConfig =
            serde_json::from_slice(json).map_err(|e| ConfigError::from_json(&e))?;
        config.validate()?;
        Ok(config)
    }
}

/// `[A-Za-z0-9._-]{1,max}`, not starting with `.` or `-` (same rule as the host's ids).
pub fn is_valid_name(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && !value.starts_with(['.', '-'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_valid_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    url.len() <= URL_MAX_LEN
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.bytes().all(|b| b.is_ascii_graphic())
}

/// `<algorithm> <base64> [comment]` on one line; the algorithm names a key type, so the line
/// cannot carry `authorized_keys` options such as `command=`.
pub fn is_valid_public_key_line(line: &str) -> bool {
    let mut parts = line.split(' ');
    let algorithm = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let known_algorithm = algorithm.starts_with("ssh-")
        || algorithm.starts_with("ecdsa-sha2-")
        || algorithm.starts_with("sk-");
    line.len() <= PUBLIC_KEY_MAX_LEN
        && known_algorithm
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-@.".contains(&b))
        && !blob.is_empty()
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && line.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

fn is_valid_absolute_path(path: &Path) -> bool {
    path.is_absolute()
        && path.as_os_str().len() <= PATH_MAX_LEN
        && path.to_str().is_some()
        && path
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n-----END OPENSSH PRIVATE KEY-----\n";
    pub(crate) const PUBLIC: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk6mN5kq0VbY2nq8rQ1d5c7m0b5n2zJ0vW3cQ8xYz1A";

    pub(crate) fn sample() -> GuestConfig {
        GuestConfig {
            version: FORMAT_VERSION,
            runner_id: "0123456789abcdef0123456789abcdef".to_owned(),
            api_token: ApiToken::generate().expect("the OS has a random source"),
            notify_url: "http://192.168.64.1:8081/v1/notify".to_owned(),
            ssh_user: "runner".to_owned(),
            ssh_authorized_key: PUBLIC.to_owned(),
            ssh_host_key: OpenSshPrivateKey::new(PEM.to_owned()).expect("valid test key"),
            ssh_host_public_key: format!("{PUBLIC} host"),
            http_listen: default_http_listen(),
            runner_dir: PathBuf::from("/home/runner/actions-runner"),
            host_time_ms: Some(1_795_000_000_000),
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn json_round_trip_keeps_every_field() -> TestResult {
        let config = sample();
        let json = config.to_json()?;
        let back = GuestConfig::from_json(&json)?;
        assert_eq!(back.runner_id, config.runner_id);
        assert_eq!(back.api_token.expose(), config.api_token.expose());
        assert_eq!(back.ssh_host_key.expose(), config.ssh_host_key.expose());
        assert_eq!(back.ssh_authorized_key, config.ssh_authorized_key);
        assert_eq!(back.ssh_host_public_key, config.ssh_host_public_key);
        assert_eq!(back.notify_url, config.notify_url);
        assert_eq!(back.http_listen, config.http_listen);
        assert_eq!(back.runner_dir, config.runner_dir);
        assert_eq!(back.host_time_ms, config.host_time_ms);
        Ok(())
    }

    #[test]
    fn debug_hides_secrets() {
        let config = sample();
        let shown = format!("{config:?}");
        assert!(!shown.contains(config.api_token.expose()), "{shown}");
        assert!(!shown.contains("b3BlbnNz"), "{shown}");
        assert!(shown.contains("runner"), "{shown}");
    }

    #[test]
    fn other_versions_and_unknown_fields_are_refused() -> TestResult {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().to_json()?)?;
        value["version"] = 2.into();
        let err = GuestConfig::from_json(&serde_json::to_vec(&value)?).expect_err("version 2");
        assert!(matches!(err, ConfigError::UnsupportedVersion { found: 2 }));

        value["version"] = FORMAT_VERSION.into();
        value["surprise"] = true.into();
        let err = GuestConfig::from_json(&serde_json::to_vec(&value)?).expect_err("unknown");
        assert!(matches!(err, ConfigError::Json { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn json_errors_do_not_quote_values() -> TestResult {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().to_json()?)?;
        let token = value["api_token"].clone();
        // A secret in the wrong place: serde's own message would quote it.
        value["runner_id"] = serde_json::json!({ "oops": token });
        value["ssh_user"] = token.clone();
        value["http_listen"] = token.clone();
        let err = GuestConfig::from_json(&serde_json::to_vec(&value)?).expect_err("bad types");
        let token = token.as_str().unwrap_or_default();
        assert!(
            !token.is_empty() && !err.to_string().contains(token),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn fields_are_validated() {
        type Edit = fn(&mut GuestConfig);
        let cases: [(&str, Edit); 10] = [
            ("runner_id", |c| c.runner_id = "../etc".into()),
            ("runner_id", |c| c.runner_id = String::new()),
            ("notify_url", |c| c.notify_url = "ftp://host/".into()),
            ("notify_url", |c| c.notify_url = "http://host/a b".into()),
            ("ssh_user", |c| c.ssh_user = "-oProxyCommand".into()),
            ("ssh_authorized_key", |c| {
                c.ssh_authorized_key = format!("command=\"sh\" {PUBLIC}")
            }),
            ("ssh_authorized_key", |c| {
                c.ssh_authorized_key = format!("{PUBLIC}\n{PUBLIC}")
            }),
            ("ssh_host_public_key", |c| {
                c.ssh_host_public_key = "ssh-ed25519".into()
            }),
            ("runner_dir", |c| c.runner_dir = "actions-runner".into()),
            ("runner_dir", |c| c.runner_dir = "/home/../etc".into()),
        ];
        for (field, edit) in cases {
            let mut config = sample();
            edit(&mut config);
            match config.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
        assert!(sample().validate().is_ok());
    }

    #[test]
    fn http_listen_defaults_to_port_8080() -> TestResult {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().to_json()?)?;
        value
            .as_object_mut()
            .map(|o| o.remove("http_listen"))
            .ok_or("not an object")?;
        let config = GuestConfig::from_json(&serde_json::to_vec(&value)?)?;
        assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
        Ok(())
    }
}
