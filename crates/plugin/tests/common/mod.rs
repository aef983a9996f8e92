//! Shared by the plugin's integration tests: the plugin binary, a local shoes-vz cluster on the
//! test backend, and the Go go-plugin client myshoes uses (built from the kit at test time).
#![allow(dead_code)]

use serde_json::Value;
use shoes_vz_cli::cluster::{ClusterOptions, LocalCluster};
use shoes_vz_test_support::prerequisite_missing_because;
use std::path::Path;
use std::time::Duration;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_shoes-vz-plugin");
pub const TOKEN: &str = "test-token-0123456789";
pub const COOKIE_KEY: &str = shoes_vz_test_support::go_client::COOKIE_KEY;
pub const COOKIE_VALUE: &str = "are_you_a_shoes?";
/// go-plugin's Kill() sends SIGKILL when the plugin has not exited this long after Shutdown.
pub const GO_PLUGIN_KILL_ESCALATION_MS: u64 = 2000;

pub async fn start_cluster(dir: &Path, agents: usize, max_runners: u32) -> LocalCluster {
    let mut options = ClusterOptions::new(dir, TOKEN);
    options.agents = agents;
    options.max_runners_per_agent = max_runners;
    options.boot_delay = Duration::from_millis(200);
    options.add_instance_timeout = Duration::from_secs(60);
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    cluster
        .wait_agents_online(agents as i64, Duration::from_secs(30))
        .await
        .expect("agents online");
    cluster
}

/// The Go client, built once per test run from the myshoes client kit (go-plugin v1.7.0,
/// grpc-go v1.77.0, vendored: no module download). `None` after the missing-prerequisite
/// policy (a loud SKIPPED line, or a failed test in CI) when the kit or a new enough Go is
/// missing.
pub fn go_client() -> Option<&'static Path> {
    match shoes_vz_test_support::go_client::client() {
        Ok(client) => Some(client),
        Err(reason) => {
            prerequisite_missing_because(reason);
            None
        }
    }
}

/// Runs the Go client against `server` (host:port) and returns its results, one per plugin
/// process. `extra_env` is passed on to the plugin through go-plugin (as myshoes does).
pub async fn go(
    client: &Path,
    server: &str,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Vec<Value> {
    let mut env = vec![("SHOESVZ_SERVER_ADDR", server), ("SHOESVZ_TOKEN", TOKEN)];
    env.extend_from_slice(extra_env);
    shoes_vz_test_support::go_client::run(client, Path::new(PLUGIN), &env, args).await
}

/// One call: its result, after checking what every plugin process must do.
pub async fn go_one(client: &Path, server: &str, args: &[&str]) -> Value {
    let mut results = go(client, server, &[], args).await;
    assert_eq!(results.len(), 1);
    let result = results.remove(0);
    assert_plugin_behaved(&result);
    result
}

/// What go-plugin saw of the plugin process, whatever the call's outcome.
pub fn assert_plugin_behaved(result: &Value) {
    let kill_ms = result["kill_ms"].as_u64().expect("kill_ms");
    assert!(
        kill_ms < GO_PLUGIN_KILL_ESCALATION_MS,
        "Kill() took {kill_ms} ms: go-plugin escalates to SIGKILL at 2 s ({result})"
    );
    assert_eq!(result["forced_kill"], false, "SIGKILLed: {result}");
    assert_eq!(result["exited"], true, "{result}");
    let exit_line = result["exit_line"].as_str().expect("exit_line");
    assert!(
        exit_line.contains("plugin process exited") && !exit_line.contains("error="),
        "the plugin must exit by itself with status 0: {exit_line:?}"
    );
    assert_eq!(result["sync_stdout"], "", "stray stdout: {result}");
    let stderr = result["plugin_stderr"].as_str().expect("plugin_stderr");
    assert!(
        stderr.contains(shoes_vz_plugin::controller::EXIT_MESSAGE),
        "no shutdown line in the plugin's log: {stderr}"
    );
    assert_hclog_lines(stderr);
    assert_stdio_clean(result["host_log"].as_str().expect("host_log"));
}

/// go-plugin v1.7.0 opens `plugin.GRPCStdio/StreamStdio` on every connection and logs, under
/// its `stdio` logger, a missing service (`Unimplemented`) or a broken stream (WARN/ERROR).
/// Our stream ends cleanly, so none of that may appear in the host's trace-level log.
pub fn assert_stdio_clean(host_log: &str) {
    let stdio: Vec<&str> = host_log
        .lines()
        .filter(|line| line.contains(".stdio:"))
        .collect();
    assert!(
        !stdio.is_empty(),
        "no stdio lines in go-plugin's trace log: is it captured? {host_log}"
    );
    for line in stdio {
        assert!(
            !line.contains("[WARN]")
                && !line.contains("[ERROR]")
                && !line.contains("Unimplemented"),
            "go-plugin logged a stdio problem: {line}"
        );
    }
}

/// Every stderr line is an hclog JSON line go-plugin can parse.
pub fn assert_hclog_lines(stderr: &str) {
    for line in stderr.lines().filter(|line| !line.is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
        for key in ["@level", "@message", "@timestamp"] {
            assert!(value[key].is_string(), "{key} missing: {line}");
        }
        let timestamp = value["@timestamp"].as_str().unwrap_or_default();
        let fraction = timestamp
            .split('.')
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches('Z');
        assert_eq!(fraction.len(), 6, "go-plugin needs microseconds: {line}");
    }
}

pub fn code(result: &Value) -> &str {
    result["code"].as_str().expect("code")
}
