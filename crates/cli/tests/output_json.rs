//! `--output json` of every command family through the real `shoes-vz` binary: stdout parses
//! as the JSON each command's `--help` documents (with its keys), and the lines for people
//! stay on stderr. Server-backed commands run against an in-process cluster (test backend).
//! `dev` has its own file (tests/dev.rs); `template import-tart` is in tests/template_vz.rs,
//! build-test-guest and warm in tests/template_qemu_json.rs.

mod common;

use common::*;
use serde_json::Value;
use shoes_vz_cli::cluster::LocalCluster;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Registers like an ephemeral runner under myshoes' script, says so, then works until stopped.
const LONG_JOB: &str = "d=\"$SHOESVZ_GUEST_ROOT/tmp/runner\"; mkdir -p \"$d\"\n\
    printf '\\357\\273\\277{\"agentName\":\"x\",\"ephemeral\":true}' > \"$d/.runner\"\n\
    echo 'runner registered: caf\u{e9}'\n\
    sleep 600\n";

const RUNNER_KEYS: [&str; 19] = [
    "cloud_id",
    "runner_name",
    "state",
    "agent_id",
    "agent_hostname",
    "template",
    "resource_type",
    "vcpus",
    "memory_mib",
    "ip_address",
    "guest_runner_state",
    "error",
    "end_reason",
    "job_started_at_ms",
    "job_finished_at_ms",
    "labels",
    "created_at_ms",
    "updated_at_ms",
    "timings_ms",
];

const AGENT_KEYS: [&str; 12] = [
    "agent_id",
    "hostname",
    "status",
    "cordoned",
    "last_seen_ms",
    "slots",
    "cpu_cores",
    "memory_mib",
    "templates",
    "version",
    "backend",
    "registered_at_ms",
];

fn shoes_vz() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoes-vz"));
    command
        .env_remove("SHOESVZ_TLS_CA")
        .env_remove("SHOESVZ_TEMPLATES_DIR")
        .env_remove("SHOESVZ_RUNNERS_DIR")
        .env_remove("SHOESVZ_AGENT_CONFIG")
        .kill_on_drop(true);
    command
}

/// `shoes-vz` against `cluster`, with the operator token in its environment.
fn operator_cli(cluster: &LocalCluster) -> Command {
    let mut command = shoes_vz();
    command
        .env("SHOESVZ_SERVER_ADDR", cluster.server.grpc_addr.to_string())
        .env("SHOESVZ_OPERATOR_TOKEN", &cluster.options.operator_token);
    command
}

/// Runs `command` with `stdin` (closed after it) to its end, within `timeout`.
async fn finish(mut command: Command, stdin: &str, timeout: Duration) -> (Output, String, String) {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("shoes-vz runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("stdin");
    drop(input);
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .expect("shoes-vz finishes in time")
        .expect("shoes-vz output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

async fn run_cli(cluster: &LocalCluster, args: &[&str]) -> (Output, String, String) {
    let mut command = operator_cli(cluster);
    command.args(args);
    finish(command, "", Duration::from_secs(60)).await
}

/// The single JSON document a successful command printed.
fn parse(args: &[&str], output: &Output, stdout: &str, stderr: &str) -> Value {
    assert!(
        output.status.success(),
        "shoes-vz {args:?} failed: {stderr}"
    );
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("shoes-vz {args:?} printed no JSON ({e}): {stdout:?}"))
}

async fn cli_json(cluster: &LocalCluster, args: &[&str]) -> Value {
    let (output, stdout, stderr) = run_cli(cluster, args).await;
    parse(args, &output, &stdout, &stderr)
}

/// One JSON object per line, every line.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
        })
        .collect()
}

#[track_caller]
fn assert_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    for key in keys {
        assert!(object.contains_key(*key), "no {key:?} in {value:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_commands_print_their_documented_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let added = client
        .add_instance(add_request("json-runner", LONG_JOB))
        .await
        .expect("add")
        .into_inner();
    let id = added.cloud_id.as_str();
    wait_state(&mut client, id, "running").await;

    let listed = cli_json(&cluster, &["runners", "list", "--output", "json"]).await;
    let listed = listed.as_array().expect("an array of runners");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_keys(&listed[0], &RUNNER_KEYS);
    assert_eq!(listed[0]["cloud_id"], id);

    // The flag is global: before the subcommand works too.
    let shown = cli_json(&cluster, &["--output", "json", "runners", "show", id]).await;
    assert_keys(&shown, &RUNNER_KEYS);
    assert!(shown["history"].as_array().is_some_and(|h| !h.is_empty()));

    // ssh with a command: one object, and the process still exits with the command's status.
    let args = [
        "runners",
        "ssh",
        id,
        "--output",
        "json",
        "--",
        "sh",
        "-c",
        "printf 'out\\n'; printf 'err' >&2; exit 3",
    ];
    let (output, stdout, stderr) = run_cli(&cluster, &args).await;
    assert_eq!(output.status.code(), Some(3), "{stdout} {stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_keys(&lines[0], &["exit_status", "stdout", "stderr", "truncated"]);
    assert_eq!(lines[0]["exit_status"], 3);
    assert_eq!(lines[0]["stdout"], "out\n");
    assert_eq!(lines[0]["stderr"], "err");
    assert_eq!(lines[0]["truncated"], false);
    assert!(
        !stderr.contains("err"),
        "the output is in the JSON: {stderr}"
    );

    // ssh without a command: one object per stdin line, in order.
    let mut command = operator_cli(&cluster);
    command.args(["runners", "ssh", id, "--output", "json"]);
    let (output, stdout, stderr) =
        finish(command, "echo one\n\nexit 4\n", Duration::from_secs(60)).await;
    assert!(output.status.success(), "{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 2, "one per non-empty line: {stdout}");
    assert_eq!(
        (&lines[0]["stdout"], &lines[0]["exit_status"]),
        (&Value::from("one\n"), &Value::from(0))
    );
    assert_eq!(lines[1]["exit_status"], 4);

    // logs: JSON lines {source, data}; the setup log's text comes whole.
    let (output, stdout, stderr) = run_cli(
        &cluster,
        &[
            "runners", "logs", id, "--source", "setup", "--output", "json",
        ],
    )
    .await;
    assert!(output.status.success(), "{stderr}");
    let chunks = json_lines(&stdout);
    assert!(!chunks.is_empty(), "no chunk: {stdout}");
    for chunk in &chunks {
        assert_keys(chunk, &["source", "data"]);
        assert_eq!(chunk["source"], "setup");
    }
    let text: String = chunks.iter().filter_map(|c| c["data"].as_str()).collect();
    assert!(text.contains("runner registered: caf\u{e9}"), "{text:?}");

    // logs --follow: lines arrive while it follows, and it ends when the runner is gone.
    let mut follow = operator_cli(&cluster)
        .args(["runners", "logs", id, "--follow", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("follow");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let mut followed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let chunk: Value = serde_json::from_str(&line).expect("a JSON line");
            let done = chunk["data"]
                .as_str()
                .is_some_and(|d| d.contains("runner registered"));
            followed.push(chunk);
            if done {
                break;
            }
        }
    })
    .await
    .expect("--follow prints the setup log as JSON lines");
    assert!(followed.iter().all(|c| c["source"].is_string()));

    // delete: the runner's record once the deletion is recorded (the VM stops after).
    let deleted = cli_json(&cluster, &["runners", "delete", id, "--output", "json"]).await;
    assert_keys(&deleted, &RUNNER_KEYS);
    assert_eq!(deleted["cloud_id"], id);
    wait_state(&mut client, id, "deleted").await;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            serde_json::from_str::<Value>(&line).expect("a JSON line");
        }
        follow.wait().await.expect("follow exits")
    })
    .await
    .expect("--follow ends once the runner is gone");
    assert!(ended.success());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_commands_print_the_agent_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;

    let listed = cli_json(&cluster, &["agents", "list", "--output", "json"]).await;
    let agent = listed.as_array().and_then(|a| a.first()).expect("an agent");
    assert_keys(agent, &AGENT_KEYS);
    let id = agent["agent_id"].as_str().expect("id").to_string();

    let shown = cli_json(&cluster, &["agents", "show", &id, "--output", "json"]).await;
    assert_keys(&shown, &["agent", "runners"]);
    assert_keys(&shown["agent"], &AGENT_KEYS);

    let cordoned = cli_json(&cluster, &["agents", "cordon", &id, "--output", "json"]).await;
    assert_keys(&cordoned, &AGENT_KEYS);
    assert_eq!(cordoned["cordoned"], true);
    let uncordoned = cli_json(&cluster, &["agents", "uncordon", &id, "--output", "json"]).await;
    assert_eq!(uncordoned["cordoned"], false);

    // drain --wait on an empty agent: progress on stderr, the drained record on stdout.
    let args = ["agents", "drain", &id, "--wait", "--output", "json"];
    let (output, stdout, stderr) = run_cli(&cluster, &args).await;
    let drained = parse(&args, &output, &stdout, &stderr);
    assert_keys(&drained, &AGENT_KEYS);
    assert_eq!(drained["cordoned"], true);
    assert_eq!(drained["slots"]["used"], 0);
    assert!(
        stderr.contains("is cordoned; 0 runner(s) to finish"),
        "{stderr}"
    );
    assert!(stderr.contains("is drained after"), "{stderr}");

    let templates = cli_json(&cluster, &["templates", "list", "--output", "json"]).await;
    let template = templates.as_array().and_then(|t| t.first()).expect("one");
    assert_keys(
        template,
        &[
            "agent_id", "hostname", "name", "version", "labels", "os", "arch", "warm",
        ],
    );

    let revoked = cli_json(&cluster, &["agents", "revoke", &id, "--output", "json"]).await;
    assert_keys(&revoked, &AGENT_KEYS);
    assert_eq!(revoked["status"], "revoked");
    cluster.shutdown().await;
}

#[tokio::test]
async fn doctor_json_counts_failed_checks_and_keeps_the_exit_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-templates-here");
    for backend in ["test", "qemu"] {
        let mut command = shoes_vz();
        command.args([
            "doctor",
            "--backend",
            backend,
            "--templates-dir",
            missing.to_str().expect("utf-8"),
            "--runners-dir",
            dir.path().to_str().expect("utf-8"),
            "--output",
            "json",
        ]);
        let (output, stdout, stderr) = finish(command, "", Duration::from_secs(60)).await;
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{backend}: no JSON ({e}): {stdout} {stderr}"));
        assert_keys(&report, &["backend", "ok", "failed", "checks"]);
        let checks = report["checks"].as_array().expect("checks");
        assert!(!checks.is_empty());
        for check in checks {
            assert_keys(check, &["name", "status", "detail"]);
            assert!(
                matches!(check["status"].as_str(), Some("ok" | "warn" | "fail")),
                "{check}"
            );
        }
        let failed = checks.iter().filter(|c| c["status"] == "fail").count();
        assert_eq!(report["failed"], failed, "{report:#}");
        assert_eq!(
            output.status.code(),
            Some(i32::from(failed > 0)),
            "{report:#}"
        );
    }
    // The qemu backend without its templates directory fails, in JSON too.
    let mut command = shoes_vz();
    command.args(["doctor", "--backend", "qemu", "--output", "json"]);
    command.args(["--templates-dir", missing.to_str().expect("utf-8")]);
    let (output, stdout, _) = finish(command, "", Duration::from_secs(60)).await;
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(
        report["failed"].as_u64().is_some_and(|n| n > 0),
        "{report:#}"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn bench_control_plane_prints_one_json_object() {
    let mut command = shoes_vz();
    command.args([
        "bench",
        "control-plane",
        "--runners",
        "2",
        "--agents",
        "1",
        "--max-runners",
        "2",
        "--boot-delay-ms",
        "10",
        "--output",
        "json",
    ]);
    let (output, stdout, stderr) = finish(command, "", Duration::from_secs(120)).await;
    let report = parse(&["bench", "control-plane"], &output, &stdout, &stderr);
    assert_keys(
        &report,
        &[
            "runners",
            "agents",
            "max_runners",
            "boot_delay_ms",
            "wall_s",
            "add_instance_overhead_ms",
            "command_push_ms",
            "delete_instance_ms",
        ],
    );
    let add = &report["add_instance_overhead_ms"];
    assert_keys(add, &["p50", "p95", "samples"]);
    assert_eq!(add["samples"], 2);
    assert!(add["p50"].is_number(), "{add}");
}

/// Needs a reflink filesystem (SHOESVZ_TEST_REFLINK_DIR, as tests/template_vz.rs).
#[tokio::test]
async fn bench_clone_prints_one_json_object() {
    let Some(root) = std::env::var_os("SHOESVZ_TEST_REFLINK_DIR") else {
        shoes_vz_test_support::prerequisite_missing(
            "bench clone --output json",
            "set SHOESVZ_TEST_REFLINK_DIR to a dir on XFS/btrfs/APFS (run .ci/reflink-fs.sh as root)",
        );
        return;
    };
    let dir = tempfile::tempdir_in(root).expect("tempdir on the reflink fs");
    let mut command = shoes_vz();
    command.args(["bench", "clone", "--runs", "1", "--output", "json", "--dir"]);
    command.arg(dir.path());
    let (output, stdout, stderr) = finish(command, "", Duration::from_secs(300)).await;
    let report = parse(&["bench", "clone"], &output, &stdout, &stderr);
    assert_keys(
        &report,
        &["runs", "filesystem", "templates", "large_over_small_p50"],
    );
    let templates = report["templates"].as_array().expect("templates");
    assert_eq!(templates.len(), 2, "1 GiB and 64 GiB: {report:#}");
    for row in templates {
        assert_keys(
            row,
            &["template", "shoes_vz_ms", "cp_ms", "shoes_vz_over_cp_p50"],
        );
        assert_eq!(row["shoes_vz_ms"]["samples"], 1);
    }
}

/// Runs the stand-in runner through the plugin: both binaries must be built beside shoes-vz
/// (`cargo test --workspace` builds them; else `cargo build -p shoes-vz-plugin -p
/// shoes-vz-standin-runner`).
#[tokio::test]
async fn bench_jobs_prints_one_json_object() {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_shoes-vz"))
        .parent()
        .expect("target dir");
    let missing: Vec<&str> = ["shoes-vz-plugin", "shoes-vz-standin-runner"]
        .into_iter()
        .filter(|name| !bin_dir.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        shoes_vz_test_support::prerequisite_missing(
            &format!("bench jobs --output json needs {}", missing.join(", ")),
            "cargo build -p shoes-vz-plugin -p shoes-vz-standin-runner (or cargo test --workspace)",
        );
        return;
    }
    let mut command = shoes_vz();
    command.args([
        "bench",
        "jobs",
        "--jobs",
        "1",
        "--job-seconds",
        "1",
        "--slots",
        "1",
        "--delete-interval",
        "1s",
        "--output",
        "json",
    ]);
    let (output, stdout, stderr) = finish(command, "", Duration::from_secs(300)).await;
    let report = parse(&["bench", "jobs"], &output, &stdout, &stderr);
    assert_keys(
        &report,
        &["jobs", "job_seconds", "slots", "delete_interval_s", "modes"],
    );
    let modes = report["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 2, "with and without reclaiming: {report:#}");
    for mode in modes {
        assert_keys(
            mode,
            &[
                "reclaim_finished",
                "jobs",
                "wall_s",
                "jobs_per_min",
                "adds_per_job",
                "queue_wait_ms",
                "slot_idle_ms",
            ],
        );
    }
    assert!(
        stderr.contains("jobs: 1 jobs of 1 s"),
        "the announcement: {stderr}"
    );
}

#[tokio::test]
async fn completions_ignore_the_output_flag() {
    let mut command = shoes_vz();
    command.args(["completions", "bash", "--output", "json"]);
    let (output, stdout, stderr) = finish(command, "", Duration::from_secs(30)).await;
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("complete -F"), "still the script");
}
