//! `shoes-vz dev` run twice on its default data dir (`$TMPDIR/shoes-vz-dev`, here a temp dir):
//! the second run says it continues the first one's state and how to start clean; `--fresh`
//! starts clean and keeps the built templates. Its `--output json` line carries the addresses
//! and the tokens file, never a token.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// One `dev` run on the test backend that exits once the cluster is up.
fn dev(tmpdir: &Path, extra: &[&str]) -> (Output, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shoes-vz"))
        .args([
            "dev",
            "--backend",
            "test",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--exit-after-demo",
            "--output",
            "json",
        ])
        .args(extra)
        .env("TMPDIR", tmpdir)
        .env_remove("SHOESVZ_TOKEN")
        .env_remove("SHOESVZ_TEMPLATES_DIR")
        .output()
        .expect("shoes-vz dev runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "dev {extra:?} failed: {stderr}");
    (output, stdout, stderr)
}

/// The one JSON line a `dev --exit-after-demo` prints, with every documented key.
fn up_line(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {stdout}");
    let up: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    for key in [
        "event",
        "backend",
        "grpc_addr",
        "metrics_url",
        "data_dir",
        "tokens_file",
        "reused_state",
    ] {
        assert!(up.get(key).is_some(), "no {key:?} in {up}");
    }
    assert_eq!(up["event"], "up");
    assert_eq!(up["backend"], "test");
    up
}

#[test]
fn a_second_run_on_the_default_dir_warns_and_fresh_starts_clean() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("shoes-vz-dev");

    let (_, stdout, stderr) = dev(tmp.path(), &[]);
    let up = up_line(&stdout);
    assert_eq!(up["data_dir"], data_dir.to_str().expect("utf-8"));
    assert_eq!(up["reused_state"], false);
    assert!(
        !stderr.contains("earlier"),
        "a first run warns of nothing: {stderr}"
    );

    // The tokens are in the tokens file (private), never on stdout.
    let tokens_file = up["tokens_file"].as_str().expect("tokens_file");
    let tokens = std::fs::read_to_string(tokens_file).expect("tokens file");
    let token = tokens
        .lines()
        .find_map(|l| l.strip_prefix("SHOESVZ_TOKEN="))
        .expect("SHOESVZ_TOKEN in the file")
        .trim_matches('\'');
    assert!(token.len() >= 16, "{tokens}");
    assert!(!stdout.contains(token), "a token on stdout: {stdout}");
    assert!(tokens.contains("SHOESVZ_OPERATOR_TOKEN="), "{tokens}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tokens_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the tokens file is the owner's only");
    }

    // The second run continues the first one's state, and says so with the way out.
    let (_, stdout, stderr) = dev(tmp.path(), &[]);
    assert_eq!(up_line(&stdout)["reused_state"], true);
    assert!(
        stderr.contains("WARNING") && stderr.contains("earlier `shoes-vz dev` run"),
        "no warning on the second run: {stderr}"
    );
    assert!(
        stderr.contains("--fresh") && stderr.contains("--data-dir"),
        "the warning says how to start clean: {stderr}"
    );
    assert!(
        stderr.contains(data_dir.to_str().expect("utf-8")),
        "{stderr}"
    );

    // --fresh forgets the state (the agents' dirs go), keeps the templates, warns of nothing.
    let marker = data_dir.join("agents").join("left-by-the-last-run");
    std::fs::write(&marker, b"x").expect("marker");
    let templates = std::fs::read_dir(data_dir.join("templates"))
        .expect("templates")
        .count();
    let (_, stdout, stderr) = dev(tmp.path(), &["--fresh"]);
    assert_eq!(up_line(&stdout)["reused_state"], false);
    assert!(!stderr.contains("WARNING: "), "{stderr}");
    assert!(stderr.contains("--fresh: forgot"), "{stderr}");
    assert!(!marker.exists(), "the earlier agents' state is gone");
    assert_eq!(
        std::fs::read_dir(data_dir.join("templates"))
            .expect("templates")
            .count(),
        templates,
        "built templates are kept"
    );
}

#[test]
fn fresh_never_wipes_a_directory_the_operator_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_shoes-vz"))
        .args(["dev", "--fresh", "--data-dir"])
        .arg(tmp.path())
        .output()
        .expect("shoes-vz runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--fresh") && stderr.contains("--data-dir"),
        "{stderr}"
    );
}
