//! The Linux agent's packaging (packaging/linux/): the example config loads as the binary loads
//! it, for the qemu backend, with every directory inside the unit's one writable StateDirectory
//! (templates and runners on one mount, or copy-on-write clones fail).

use shoes_vz_agent::config::{AgentConfig, BackendKind, CloneMode};
use std::path::{Path, PathBuf};

fn packaging(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/linux")
        .join(file)
}

/// The values of `key=` lines in the unit (comments skipped).
fn unit_values(key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(packaging("shoes-vz-agent.service")).expect("unit");
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn example_config_runs_qemu_inside_the_state_directory() {
    let config: AgentConfig =
        shoes_vz_telemetry::load_config(Some(&packaging("agent.toml"))).expect("agent.toml loads");
    assert_eq!(config.backend, BackendKind::Qemu);
    assert_eq!(config.clone_mode, CloneMode::Reflink);
    assert!(
        config.token.is_none(),
        "no token in the world-readable config file"
    );

    let state = unit_values("StateDirectory");
    assert_eq!(state, ["shoes-vz-agent"]);
    let state_dir = Path::new("/var/lib").join(&state[0]);
    for dir in [&config.data_dir, &config.templates_dir, &config.runners_dir] {
        assert!(
            dir.starts_with(&state_dir),
            "{} is outside {}, the only writable mount",
            dir.display(),
            state_dir.display()
        );
    }
    assert!(
        unit_values("ReadOnlyPaths").is_empty(),
        "a read-only bind mount over templates would put them on another mount than runners"
    );
}

#[test]
fn unit_reads_the_example_config_and_no_secret_from_argv() {
    let exec = unit_values("ExecStart");
    assert_eq!(exec.len(), 1);
    assert!(
        exec[0].contains("--config /etc/shoes-vz/agent.toml"),
        "{exec:?}"
    );
    for line in unit_values("ExecStart")
        .iter()
        .chain(&unit_values("ExecStartPre"))
    {
        assert!(!line.to_lowercase().contains("token"), "{line}");
    }
    assert_eq!(unit_values("EnvironmentFile"), ["/etc/shoes-vz/agent.env"]);
    assert_eq!(unit_values("DeviceAllow"), ["/dev/kvm rw"]);
}
