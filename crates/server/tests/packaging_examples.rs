//! The server's packaging (packaging/linux/): the example config loads as the binary loads it,
//! its store lives in the unit's StateDirectory, and the example env file's placeholder tokens
//! keep the server from starting until they are replaced.

use shoes_vz_server::config::{ConfigError, ServerConfig};
use std::path::PathBuf;

fn packaging(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/linux")
        .join(file)
}

/// The values of `key=` lines in a unit or env file (comments skipped).
fn values(file: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(packaging(file)).expect("packaging file");
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

fn example_config() -> ServerConfig {
    shoes_vz_telemetry::load_config(Some(&packaging("server.toml"))).expect("server.toml loads")
}

#[test]
fn example_config_is_valid_once_a_real_token_is_set() {
    let mut config = example_config();
    assert!(
        config.auth.token.is_none(),
        "no token in the world-readable config file"
    );
    config.auth.token = Some("0123456789abcdef0123456789abcdef".into());
    config.validate().expect("example config validates");
}

#[test]
fn store_lives_in_the_units_state_directory() {
    let state = values("shoes-vz-server.service", "StateDirectory");
    assert_eq!(state, ["shoes-vz-server"]);
    let config = example_config();
    assert!(
        config
            .database_url
            .starts_with("sqlite:///var/lib/shoes-vz-server/"),
        "{} is outside the StateDirectory, which is the only writable path",
        config.database_url
    );
}

#[test]
fn unit_reads_the_example_paths_and_no_secret_from_argv() {
    let exec = values("shoes-vz-server.service", "ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(
        exec[0].contains("--config /etc/shoes-vz/server.toml"),
        "{exec:?}"
    );
    assert!(!exec[0].to_lowercase().contains("token"), "{exec:?}");
    assert_eq!(
        values("shoes-vz-server.service", "EnvironmentFile"),
        ["/etc/shoes-vz/server.env"]
    );
}

#[test]
fn placeholder_tokens_keep_the_server_from_starting() {
    // Each placeholder alone (the others real) must stop the server: an operator who replaces
    // two of three still gets told.
    let strong = || Some("0123456789abcdef0123456789abcdef".to_string());
    for placeholder in [
        "SHOESVZ_TOKEN",
        "SHOESVZ_AGENT_TOKEN",
        "SHOESVZ_OPERATOR_TOKEN",
    ] {
        let mut config = example_config();
        config.auth.token = strong();
        config.auth.agent_token = strong();
        config.auth.operator_token = strong();
        let value = values("server.env", placeholder).pop();
        assert!(value.is_some(), "server.env has no {placeholder}");
        match placeholder {
            "SHOESVZ_TOKEN" => config.auth.token = value,
            "SHOESVZ_AGENT_TOKEN" => config.auth.agent_token = value,
            _ => config.auth.operator_token = value,
        }
        assert!(
            matches!(config.validate(), Err(ConfigError::WeakToken)),
            "{placeholder}'s placeholder was accepted"
        );
    }
}
