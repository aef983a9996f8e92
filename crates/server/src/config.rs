//! Server configuration: one TOML file, `SHOESVZ_*` environment overrides, flags on top.

use serde::{Deserialize, Serialize};
use shoes_vz_model::ResourceTable;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC address for myshoes' plugin, operators and agents.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; `None` turns the endpoint off.
    pub metrics_listen: Option<SocketAddr>,
    /// `sqlite:///path/state.db?mode=rwc` (embedded) or `postgres://user@host/db`.
    pub database_url: String,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub scheduler: SchedulerConfig,
    pub resources: ResourceTable,
    pub timeouts: Timeouts,
    pub history: HistoryConfig,
}

/// How long deleted runners stay in the state store (for `runners show` and `list --all`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Deleted runners created longer ago than this are pruned, with their state history.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the server prunes.
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 24 * 3600),
            prune_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer token for ShoesService: myshoes' plugin may only add and delete runners. Required.
    pub token: Option<String>,
    /// Bearer token for OperatorService (the `shoes-vz` CLI): list, show, ssh, logs, cordon,
    /// drain, revoke. Unset: the operator API is off.
    pub operator_token: Option<String>,
    /// The fleet's shared enrollment token: an agent presents it once, to enroll, and gets its
    /// own credential for everything after. Defaults to `token` (logged as a warning).
    pub agent_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Request labels that say nothing about the template (compared case-insensitively).
    pub ignored_labels: Vec<String>,
    /// Template used when a request has no meaningful label; `None` means any template.
    pub default_template: Option<String>,
}

impl Default for SchedulerConfig {
    /// myshoes accepts a job when one of its labels is `myshoes` or `self-hosted`, or its
    /// only label is `dependabot` (myshoes pkg/gh/label.go:6-18), and registers every runner
    /// with `myshoes,dependabot` besides GitHub's own `self-hosted`, OS and arch labels: none
    /// of these says which template a job needs.
    fn default() -> Self {
        Self {
            ignored_labels: ["self-hosted", "myshoes", "dependabot"]
                .map(String::from)
                .to_vec(),
            default_template: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long AddInstance waits, queueing for a slot included, for ssh-ready (myshoes gives
    /// it 5 minutes, plugin start and GitHub calls included).
    #[serde(with = "humantime_serde")]
    pub add_instance: Duration,
    /// How long AddInstance queues for a free slot before answering ResourceExhausted.
    /// Queued calls are served first come, first served.
    #[serde(with = "humantime_serde")]
    pub queue_wait: Duration,
    /// A runner whose AddInstance caller went away (cut, timed out, server restarted) is
    /// destroyed when no retry under its runner_name claims it within this long; default
    /// `add_instance`.
    #[serde(default, with = "humantime_serde")]
    pub claim_grace: Option<Duration>,
    /// How long DeleteInstance waits for the agent to confirm (myshoes gives it 3 minutes).
    #[serde(with = "humantime_serde")]
    pub delete_instance: Duration,
    /// An agent silent this long (no message, heartbeats included) is offline: its session
    /// ends and it must reconnect. Agents drop a silent server after the same time.
    #[serde(with = "humantime_serde")]
    pub agent_offline_after: Duration,
    /// How often server and agent send each other a heartbeat on the Sync stream.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often agents send a full snapshot (their heartbeat).
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            add_instance: Duration::from_secs(240),
            queue_wait: Duration::from_secs(90),
            claim_grace: None,
            delete_instance: Duration::from_secs(120),
            agent_offline_after: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            snapshot_interval: Duration::from_secs(10),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            database_url: "sqlite://shoes-vz-state.db?mode=rwc".to_string(),
            auth: AuthConfig::default(),
            tls: None,
            scheduler: SchedulerConfig::default(),
            resources: ResourceTable::default(),
            timeouts: Timeouts::default(),
            history: HistoryConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no auth token is configured: set auth.token in the config file or SHOESVZ_TOKEN")]
    NoToken,
    #[error("auth token is shorter than 16 characters; use a long random token (e.g. `openssl rand -hex 32`)")]
    WeakToken,
    #[error("history.retention is {0:?}; keep deleted runners at least an hour (default 30d), and history.prune_interval above zero")]
    Retention(Duration),
    #[error("invalid resource table")]
    Resources(#[source] shoes_vz_model::ResourceError),
    #[error("timeouts.{0} must be greater than zero")]
    ZeroTimeout(&'static str),
    #[error("timeouts.agent_offline_after must be at least twice timeouts.heartbeat_interval, or every agent flaps offline")]
    OfflineBeforeHeartbeat,
    #[error("timeouts.add_instance ({add:?}) must leave at least {MIN_BOOT_TIME:?} after timeouts.queue_wait ({queue:?}) for the VM to boot; lower queue_wait or raise add_instance (below myshoes' 5 minutes)")]
    QueueLeavesNoBootTime { add: Duration, queue: Duration },
}

/// The least time a queued AddInstance keeps for booting once it gets a slot.
pub const MIN_BOOT_TIME: Duration = Duration::from_secs(30);
/// The shortest history.retention accepted.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

impl Timeouts {
    pub fn claim_grace(&self) -> Duration {
        self.claim_grace.unwrap_or(self.add_instance)
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for token in [
            &self.auth.token,
            &self.auth.operator_token,
            &self.auth.agent_token,
        ]
        .into_iter()
        .flatten()
        {
            if token.len() < 16 {
                return Err(ConfigError::WeakToken);
            }
        }
        if self.auth.token.is_none() {
            return Err(ConfigError::NoToken);
        }
        self.resources.validate().map_err(ConfigError::Resources)?;
        let t = &self.timeouts;
        for (name, value) in [
            ("add_instance", t.add_instance),
            ("delete_instance", t.delete_instance),
            ("agent_offline_after", t.agent_offline_after),
            ("snapshot_interval", t.snapshot_interval),
            ("heartbeat_interval", t.heartbeat_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        if t.agent_offline_after < t.heartbeat_interval * 2 {
            return Err(ConfigError::OfflineBeforeHeartbeat);
        }
        if self.history.retention < MIN_RETENTION || self.history.prune_interval.is_zero() {
            return Err(ConfigError::Retention(self.history.retention));
        }
        if t.add_instance < t.queue_wait + MIN_BOOT_TIME {
            return Err(ConfigError::QueueLeavesNoBootTime {
                add: t.add_instance,
                queue: t.queue_wait,
            });
        }
        Ok(())
    }

    pub fn agent_token(&self) -> Option<&str> {
        self.auth
            .agent_token
            .as_deref()
            .or(self.auth.token.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_a_token() {
        let mut config = ServerConfig::default();
        assert!(matches!(config.validate(), Err(ConfigError::NoToken)));
        config.auth.token = Some("0123456789abcdef".into());
        config.validate().expect("defaults plus a token are valid");
        assert_eq!(config.agent_token(), Some("0123456789abcdef"));
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config: ServerConfig = toml::from_str(
            r#"
            listen = "0.0.0.0:6000"
            [timeouts]
            add_instance = "3m"
            [scheduler]
            default_template = "macos-26"
            "#,
        )
        .expect("valid toml");
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.timeouts.add_instance, Duration::from_secs(180));
        assert_eq!(config.timeouts.delete_instance, Duration::from_secs(120));
        assert_eq!(
            config.scheduler.default_template.as_deref(),
            Some("macos-26")
        );
        assert!(toml::from_str::<ServerConfig>("listn = \"0.0.0.0:1\"").is_err());
    }

    #[test]
    fn weak_tokens_and_flapping_timeouts_are_refused() {
        let mut config = ServerConfig::default();
        config.auth.token = Some("short".into());
        assert!(matches!(config.validate(), Err(ConfigError::WeakToken)));
        config.auth.token = Some("0123456789abcdef".into());
        config.timeouts.agent_offline_after = Duration::from_secs(5);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::OfflineBeforeHeartbeat)
        ));
        config.timeouts.agent_offline_after = Duration::from_secs(30);
        config.timeouts.queue_wait = Duration::from_secs(230);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::QueueLeavesNoBootTime { .. })
        ));
    }

    #[test]
    fn myshoes_labels_are_ignored_and_the_claim_grace_defaults_to_the_add_timeout() {
        let config = ServerConfig::default();
        for label in ["self-hosted", "myshoes", "dependabot"] {
            assert!(config.scheduler.ignored_labels.iter().any(|l| l == label));
        }
        assert_eq!(config.timeouts.claim_grace(), config.timeouts.add_instance);
        assert_eq!(config.timeouts.queue_wait, Duration::from_secs(90));
    }
}
