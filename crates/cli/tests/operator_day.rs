//! An operator's day, on an in-process cluster with the test backend and the real `shoes-vz`
//! binary as the operator runs it: why did a runner fail (`runners show`), a command in a live
//! runner (`runners ssh`), its setup log without the script's secret (`runners logs`), taking a
//! host out of rotation (`agents cordon`, `agents drain --wait`), and the two tokens kept apart.

mod common;

use common::*;
use shoes_vz_cli::fleet_client::FleetClient;
use shoes_vz_protocol::client::{connect_operator, connect_shoes, ConnectOptions};
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_protocol::shoes::v1 as pb;
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;
use tonic::Code;

/// Registers a runner the way an ephemeral runner under myshoes' script does (`.runner` in
/// myshoes' runner dir under the test guest's root), then works until it is stopped.
const LONG_JOB: &str = "d=\"$SHOESVZ_GUEST_ROOT/tmp/runner\"; mkdir -p \"$d\"\n\
    printf '\\357\\273\\277{\"agentName\":\"x\",\"ephemeral\":true}' > \"$d/.runner\"\n\
    sleep 600\n";

/// The `shoes-vz` binary against this cluster, with the operator token in its environment.
fn operator_cli(cluster: &shoes_vz_cli::cluster::LocalCluster, token: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoes-vz"));
    command
        .env("SHOESVZ_SERVER_ADDR", cluster.server.grpc_addr.to_string())
        .env("SHOESVZ_OPERATOR_TOKEN", token)
        .env_remove("SHOESVZ_TLS_CA")
        .kill_on_drop(true);
    command
}

async fn run_cli(
    cluster: &shoes_vz_cli::cluster::LocalCluster,
    args: &[&str],
) -> (Output, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        operator_cli(cluster, &cluster.options.operator_token)
            .args(args)
            .output(),
    )
    .await
    .expect("the CLI finishes")
    .expect("the CLI runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

async fn cli_json(
    cluster: &shoes_vz_cli::cluster::LocalCluster,
    args: &[&str],
) -> serde_json::Value {
    let (output, stdout, stderr) = run_cli(cluster, args).await;
    assert!(output.status.success(), "shoes-vz {args:?}: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {stdout}"))
}

async fn add(client: &mut FleetClient, name: &str, script: &str) -> pb::AddInstanceResponse {
    client
        .add_instance(add_request(name, script))
        .await
        .unwrap_or_else(|status| panic!("AddInstance {name}: {status}"))
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_of_a_failed_runner_carries_its_reason_history_and_timings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    // A setup script that fails before its runner registers, as myshoes' does when GitHub
    // refuses the token (config.sh exits non-zero).
    let script = "echo 'Configuring runner'\necho 'Http response code: NotFound' >&2\nexit 3\n";
    let added = add(&mut client, "fails-in-setup", script).await;
    // A failed runner is destroyed, never repaired: it ends deleted, its error kept.
    wait_state(&mut client, &added.cloud_id, "deleted").await;

    let shown = cli_json(
        &cluster,
        &["runners", "show", &added.cloud_id, "--output", "json"],
    )
    .await;
    assert_eq!(shown["state"], "deleted", "{shown:#}");
    let error = shown["error"].as_str().expect("error");
    assert!(
        error.contains("setup") && error.contains('3'),
        "the reason names the setup script and its exit status: {error}"
    );
    let timings = &shown["timings_ms"];
    for phase in ["clone", "boot_to_ssh", "startup"] {
        assert!(
            timings[phase].as_i64().is_some_and(|ms| ms > 0),
            "{phase} was measured: {timings}"
        );
    }
    // The test backend boots in boot_delay (300 ms): boot-to-SSH cannot be shorter.
    assert!(
        timings["boot_to_ssh"].as_i64().unwrap_or(0) >= 300,
        "{timings}"
    );
    let history = shown["history"].as_array().expect("history");
    let states: Vec<&str> = history.iter().filter_map(|h| h["state"].as_str()).collect();
    for state in ["creating", "booting", "ssh-ready", "error", "deleted"] {
        assert!(
            states.contains(&state),
            "{state} in the history: {states:?}"
        );
    }
    let times: Vec<i64> = history.iter().filter_map(|h| h["at_ms"].as_i64()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]) && times.len() == history.len(),
        "timestamps in order: {times:?}"
    );
    let failed = history
        .iter()
        .find(|h| h["state"] == "error")
        .expect("the error step");
    assert_eq!(
        failed["detail"], shown["error"],
        "the history carries the reason"
    );

    // The table says the same to a person.
    let (output, table, stderr) = run_cli(&cluster, &["runners", "show", &added.cloud_id]).await;
    assert!(output.status.success(), "{stderr}");
    assert!(
        table.contains("first error") && table.contains(error),
        "{table}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_a_command_in_a_live_runner_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let added = add(&mut client, "ssh-target", LONG_JOB).await;

    // Output, error output and the exit status come back; the command runs in that runner's
    // guest (its own SHOESVZ_TEST_VM marker), not on the operator's machine.
    let (output, stdout, stderr) = run_cli(
        &cluster,
        &[
            "runners",
            "ssh",
            &added.cloud_id,
            "--",
            "sh",
            "-c",
            "echo \"in $SHOESVZ_TEST_VM as $(id -un)\"; echo 'to stderr' >&2; exit 7",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(7), "{stdout} {stderr}");
    let runner = get(&mut client, &added.cloud_id).await;
    let runner_id = added.cloud_id.trim_start_matches("shoes-vz-");
    assert!(
        stdout.starts_with("in ") && stdout.contains(runner_id),
        "ran inside runner {runner_id} ({}): {stdout}",
        runner.ip_address
    );
    assert!(stderr.contains("to stderr"), "{stderr}");

    // Arguments reach the guest as given, quoting and all.
    let (output, stdout, _) = run_cli(
        &cluster,
        &[
            "runners",
            "ssh",
            &added.cloud_id,
            "--",
            "printf",
            "%s|",
            "a b",
            "it's",
        ],
    )
    .await;
    assert!(output.status.success());
    assert_eq!(stdout, "a b|it's|");

    // A runner that is gone says so.
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: added.cloud_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    wait_state(&mut client, &added.cloud_id, "deleted").await;
    let (output, _, stderr) =
        run_cli(&cluster, &["runners", "ssh", &added.cloud_id, "--", "true"]).await;
    assert!(!output.status.success());
    assert!(
        stderr.contains("deleted") || stderr.contains("not"),
        "{stderr}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_return_the_setup_log_without_the_scripts_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    // A registration token as GitHub issues them (29 upper-case letters and digits), printed
    // by a careless script the way config.sh's command line would show it.
    let token = "AABBCCDDEEFF00112233445566778";
    assert_eq!(token.len(), 29);
    let script = format!(
        "RUNNER_TOKEN={token}\n\
         echo \"./config.sh --unattended --token $RUNNER_TOKEN --labels myshoes\"\n\
         echo 'runner registered'\n{LONG_JOB}"
    );
    let added = add(&mut client, "logs-target", &script).await;
    wait_state(&mut client, &added.cloud_id, "running").await;

    let (output, logs, stderr) = run_cli(
        &cluster,
        &["runners", "logs", &added.cloud_id, "--source", "setup"],
    )
    .await;
    assert!(output.status.success(), "{stderr}");
    assert!(logs.contains("runner registered"), "the setup log: {logs}");
    assert!(
        logs.contains("--token *** --labels myshoes"),
        "the token is masked where it was: {logs}"
    );
    assert!(!logs.contains(token), "the secret leaked: {logs}");
    assert!(!stderr.contains(token));

    // Without --source: every log this backend keeps; the test backend has no console and
    // says so instead of failing.
    let (output, logs, _) = run_cli(&cluster, &["runners", "logs", &added.cloud_id]).await;
    assert!(output.status.success());
    assert!(
        logs.contains("==> setup <==") && logs.contains("runner registered"),
        "{logs}"
    );
    assert!(logs.contains("keeps no console log"), "{logs}");
    assert!(!logs.contains(token));

    // --follow keeps printing what comes and ends when the runner is gone.
    let mut follow = operator_cli(&cluster, &cluster.options.operator_token)
        .args(["runners", "logs", &added.cloud_id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("follow");
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: added.cloud_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let followed = tokio::time::timeout(Duration::from_secs(30), follow.wait())
        .await
        .expect("--follow ends once the runner is gone")
        .expect("follow exits");
    assert!(followed.success());
    cluster.shutdown().await;
}

async fn agent_ids(cluster: &shoes_vz_cli::cluster::LocalCluster) -> Vec<String> {
    let listed = cli_json(cluster, &["agents", "list", "--output", "json"]).await;
    let mut ids: Vec<String> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a["agent_id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_agent_gets_no_new_runners_and_keeps_its_live_ones_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 2, 2);
    opts.queue_wait = Duration::from_secs(2);
    let mut cluster = start(opts).await;
    let mut client = cluster.client().await.expect("client");
    assert_eq!(agent_ids(&cluster).await.len(), 2);

    let live = add(&mut client, "before-cordon", LONG_JOB).await;
    let host = get(&mut client, &live.cloud_id).await.agent_id;
    let (output, said, stderr) = run_cli(&cluster, &["agents", "cordon", &host]).await;
    assert!(output.status.success(), "{stderr}");
    assert!(said.contains("cordoned"), "{said}");
    assert_eq!(cluster.server.fleet.gauges().agents_cordoned, 1);
    let metrics_addr = cluster.server.metrics_addr.expect("metrics");
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.lines().any(|l| l == "shoesvz_agents_cordoned 1"),
        "cordon is visible in /metrics"
    );

    // New runners go to the other agent only; when it is full, none is placed at all.
    for name in ["after-cordon-1", "after-cordon-2"] {
        let added = add(&mut client, name, LONG_JOB).await;
        assert_ne!(
            get(&mut client, &added.cloud_id).await.agent_id,
            host,
            "{name}"
        );
    }
    let refused = client
        .add_instance(add_request("no-room", LONG_JOB))
        .await
        .expect_err("the only free slot is on the cordoned agent");
    assert!(
        matches!(refused.code(), Code::ResourceExhausted | Code::Unavailable),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("cordon"),
        "the refusal says why: {}",
        refused.message()
    );

    // The live runner was never touched, and the cordon outlives a server restart.
    let shown = get(&mut client, &live.cloud_id).await;
    assert_eq!(
        (shown.state.as_str(), shown.agent_id.as_str()),
        ("running", host.as_str())
    );
    cluster.restart_server().await.expect("restart");
    cluster
        .wait_agents_online(2, Duration::from_secs(30))
        .await
        .expect("agents back");
    let mut client = cluster.client().await.expect("client");
    let shown = cli_json(&cluster, &["agents", "show", &host, "--output", "json"]).await;
    assert_eq!(shown["agent"]["cordoned"], true, "{shown:#}");
    let runners = shown["runners"].as_array().expect("its runners");
    assert_eq!(runners.len(), 1, "{shown:#}");
    assert_eq!(runners[0]["cloud_id"], live.cloud_id.as_str());
    let refused = client
        .add_instance(add_request("no-room-after-restart", LONG_JOB))
        .await
        .expect_err("still cordoned after the restart");
    assert!(refused.message().contains("cordon"), "{refused:?}");
    assert_eq!(get(&mut client, &live.cloud_id).await.state, "running");

    // Uncordoned, it takes runners again.
    let (output, _, stderr) = run_cli(&cluster, &["agents", "uncordon", &host]).await;
    assert!(output.status.success(), "{stderr}");
    let placed = add(&mut client, "after-uncordon", LONG_JOB).await;
    assert_eq!(get(&mut client, &placed.cloud_id).await.agent_id, host);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_returns_when_the_last_runner_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let first = add(&mut client, "drained-1", LONG_JOB).await;
    let second = add(&mut client, "drained-2", LONG_JOB).await;
    let host = get(&mut client, &first.cloud_id).await.agent_id;

    let mut drain = operator_cli(&cluster, &cluster.options.operator_token)
        .args(["agents", "drain", &host, "--wait", "--timeout", "2m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("drain");
    // Cordoned at once: the server says so before any runner ends.
    wait_until("the agent to be cordoned", || {
        cluster.server.fleet.gauges().agents_cordoned == 1
    })
    .await;
    for runner in [&first, &second] {
        assert_eq!(get(&mut client, &runner.cloud_id).await.state, "running");
    }

    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: first.cloud_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    wait_state(&mut client, &first.cloud_id, "deleted").await;
    assert!(
        drain.try_wait().expect("drain state").is_none(),
        "drain returned while a runner still ran"
    );

    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: second.cloud_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let drained = tokio::time::timeout(Duration::from_secs(60), drain.wait_with_output())
        .await
        .expect("drain --wait returns once the agent is empty")
        .expect("drain output");
    let said = String::from_utf8_lossy(&drained.stdout);
    let progress = String::from_utf8_lossy(&drained.stderr);
    assert!(drained.status.success(), "{said} {progress}");
    assert!(
        said.contains("is cordoned; 2 runner(s) to finish"),
        "{said}"
    );
    // Not a terminal: progress comes as plain lines, one per change it saw.
    for line in ["2 runner(s) left", "0 runner(s) left", "is drained after"] {
        assert!(progress.contains(line), "{line:?} in {progress}");
    }
    assert!(
        !progress.contains('\r'),
        "no spinner off a terminal: {progress:?}"
    );
    let live = client.list_runners(false).await.expect("list");
    assert!(
        live.is_empty(),
        "nothing runs on the drained agent: {live:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_myshoes_token_cannot_operate_and_the_operator_token_cannot_add() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 2)).await;
    let addr = cluster.server.grpc_addr.to_string();
    let options = ConnectOptions::default();
    let mut client = cluster.client().await.expect("client");
    let live = add(&mut client, "token-test", LONG_JOB).await;
    let host = get(&mut client, &live.cloud_id).await.agent_id;

    // myshoes' token on the operators' API: nothing listed, shown, run or cordoned.
    let mut as_myshoes = connect_operator(&addr, &cluster.options.token, &options)
        .await
        .expect("connect");
    let refusals = [
        as_myshoes
            .list_runners(op::ListRunnersRequest::default())
            .await
            .map(|_| ()),
        as_myshoes
            .get_runner(op::GetRunnerRequest {
                cloud_id: live.cloud_id.clone(),
            })
            .await
            .map(|_| ()),
        as_myshoes
            .runner_exec(op::RunnerExecRequest {
                cloud_id: live.cloud_id.clone(),
                command: vec!["true".into()],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        as_myshoes
            .set_agent_cordon(op::SetAgentCordonRequest {
                agent_id: host.clone(),
                cordoned: true,
            })
            .await
            .map(|_| ()),
    ];
    for refusal in refusals {
        let status = refusal.expect_err("myshoes' token is not an operator's");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // The CLI with that token says what is wrong.
    let (output, _, stderr) = {
        let output = operator_cli(&cluster, &cluster.options.token)
            .args(["runners", "list"])
            .output()
            .await
            .expect("cli");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output, (), stderr)
    };
    assert!(!output.status.success());
    assert!(stderr.to_lowercase().contains("token"), "{stderr}");
    assert!(
        !stderr.contains(&cluster.options.token),
        "the token is never echoed"
    );
    assert_eq!(cluster.server.fleet.gauges().agents_cordoned, 0);

    // The operator token on myshoes' API: no runner added or deleted.
    let mut as_operator = connect_shoes(&addr, &cluster.options.operator_token, &options)
        .await
        .expect("connect");
    let status = as_operator
        .add_instance(add_request("by-an-operator", LONG_JOB))
        .await
        .expect_err("operators do not add runners");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = as_operator
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: live.cloud_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("operators delete through the operator API");
    assert_eq!(status.code(), Code::Unauthenticated);
    let runners = client.list_runners(false).await.expect("list");
    assert_eq!(runners.len(), 1, "only myshoes' runner: {runners:?}");
    assert_eq!(runners[0].state, "running");
    cluster.shutdown().await;
}
