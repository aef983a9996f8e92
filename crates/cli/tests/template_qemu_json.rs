//! `shoes-vz template build-test-guest` and `template warm` with `--output json`, through the
//! real binary: each prints one JSON object with its documented keys (built, then up to date on
//! a second run), and its progress as plain lines on stderr (no terminal here). Needs what the
//! QEMU tests need (QEMU, apt-get, dpkg-deb, mkfs.ext4) and the workspace's runner-agent.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn missing_prerequisite() -> Option<String> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(tool).is_file())
        })
    };
    let tools: Vec<&str> = ["qemu-system-x86_64", "apt-get", "dpkg-deb", "mkfs.ext4"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if !tools.is_empty() {
        return Some(format!(
            "{} not installed; run .ci/qemu-deps.sh",
            tools.join(", ")
        ));
    }
    let beside = Path::new(env!("CARGO_BIN_EXE_shoes-vz")).with_file_name("shoes-vz-runner-agent");
    if !beside.is_file() && std::env::var_os("SHOESVZ_RUNNER_AGENT").is_none() {
        return Some(
            "no shoes-vz-runner-agent binary beside shoes-vz; cargo build -p shoes-vz-runner-agent \
             (cargo test --workspace builds it)"
                .to_string(),
        );
    }
    None
}

/// Runs `shoes-vz ARGS --output json`; returns the JSON on stdout and the stderr text.
fn json(args: &[&str]) -> (Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoes-vz"))
        .args(args)
        .args(["--output", "json"])
        .env_remove("SHOESVZ_TEMPLATES_DIR")
        .output()
        .expect("shoes-vz runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "shoes-vz {args:?} failed: {stderr}"
    );
    let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "shoes-vz {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (value, stderr)
}

#[track_caller]
fn assert_keys(value: &Value, keys: &[&str]) {
    for key in keys {
        assert!(value.get(*key).is_some(), "no {key:?} in {value:#}");
    }
}

#[test]
fn build_and_warm_print_their_result_as_json() {
    if let Some(reason) = missing_prerequisite() {
        shoes_vz_test_support::prerequisite_missing_because(&reason);
        return;
    }
    let templates = tempfile::tempdir().expect("tempdir");
    let templates_dir = templates.path().to_str().expect("utf-8");
    // The .deb downloads are shared with the QEMU tests' cache; the template is built anew.
    let debs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shoes-vz-debs");
    let build = [
        "template",
        "build-test-guest",
        "--templates-dir",
        templates_dir,
        "--cache-dir",
        debs.to_str().expect("utf-8"),
    ];
    let build_keys = [
        "name",
        "version",
        "built",
        "dir",
        "elapsed_ms",
        "dev_host_public_key",
    ];

    let (built, progress) = json(&build);
    assert_keys(&built, &build_keys);
    assert_eq!(built["built"], true, "{built:#}");
    assert!(built["dev_host_public_key"].is_null());
    let name = built["name"].as_str().expect("name").to_string();
    assert!(
        progress.contains(&format!("test guest {name}: built")),
        "plain progress lines off a terminal: {progress}"
    );
    assert!(!progress.contains('\r'), "no spinner off a terminal");
    let (again, _) = json(&build);
    assert_eq!(again["built"], false, "cached by its inputs: {again:#}");
    assert_eq!(again["dir"], built["dir"]);

    let warm = [
        "template",
        "warm",
        &name,
        "--templates-dir",
        templates_dir,
        "--memory-mib",
        "256",
    ];
    let warm_keys = [
        "name",
        "built",
        "dir",
        "boot_to_ssh_ms",
        "save_ms",
        "state_bytes",
    ];
    let (warmed, progress) = json(&warm);
    assert_keys(&warmed, &warm_keys);
    assert_eq!(warmed["built"], true, "{warmed:#}");
    assert!(warmed["boot_to_ssh_ms"].as_u64().is_some_and(|ms| ms > 0));
    assert!(warmed["state_bytes"].as_u64().is_some_and(|b| b > 0));
    assert!(progress.contains(": built"), "{progress}");
    let (again, _) = json(&warm);
    assert_eq!(again["built"], false, "{again:#}");
    assert!(
        again["boot_to_ssh_ms"].is_null(),
        "nothing measured: {again:#}"
    );
}
