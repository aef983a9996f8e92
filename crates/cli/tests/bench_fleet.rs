//! `shoes-vz bench fleet` end to end: the real `shoes-vz` and `shoes-vz-server` binaries, a few
//! simulated agents, every phase. Asserts that each section is there with plausible values,
//! never how fast anything was.

mod common;

use serde_json::Value;
use std::time::Duration;

/// Runs a small `bench fleet --output json` (with `extra` arguments) and returns its report.
async fn bench_fleet(database_url: Option<&str>, extra: &[&str]) -> Value {
    let server = &common::processes::binaries().0;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoes-vz"));
    command
        .args(["bench", "fleet", "--agents", "3", "--pairs-per-level", "5"])
        .args([
            "--concurrency",
            "1,2",
            "--live-for",
            "1s",
            "--idle-for",
            "200ms",
        ])
        .args(["--output", "json", "--server-bin"])
        .arg(server)
        .args(extra)
        .env_remove("SHOESVZ_BENCH_DATABASE_URL")
        .kill_on_drop(true);
    if let Some(url) = database_url {
        // Through the environment, as the help recommends (the URL holds a password).
        command.env("SHOESVZ_BENCH_DATABASE_URL", url);
    }
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("bench fleet finishes within 5 minutes")
        .expect("bench fleet runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench fleet failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "bench fleet printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing or not a number in {report:#}"))
}

fn assert_plausible(report: &Value, database: &str) {
    assert_eq!(report["setup"]["agents"], 3);
    assert_eq!(report["setup"]["database"], database);
    assert!(number(report, "/setup/snapshot_interval_ms") > 0.0);
    assert!(number(report, "/startup/agents_online_ms") > 0.0);
    assert!(number(report, "/startup/server_rss_online_kib") > 1024.0);

    let levels = report["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2, "{report:#}");
    for (level, (concurrency, pairs)) in levels.iter().zip([(1, 2), (2, 5)]) {
        assert_eq!(level["concurrency"], concurrency);
        assert_eq!(level["pairs"], pairs, "{level:#}");
        assert_eq!(level["add_errors"], 0, "{level:#}");
        assert_eq!(level["delete_errors"], 0, "{level:#}");
        assert!(number(level, "/pairs_per_s") > 0.0);
        let (p50, p99) = (
            number(level, "/add_overhead/p50_ms"),
            number(level, "/add_overhead/p99_ms"),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{level:#}");
        assert!(number(level, "/delete/p50_ms") > 0.0);
        assert!(number(level, "/server_cpu_ms_per_1000_adds") >= 0.0);
        assert!(number(level, "/server_rss_kib") > 1024.0);
        assert!(level["writer_lag"].is_object(), "{level:#}");
    }

    let live = &report["live"];
    assert_eq!(live["slots"], 6);
    assert_eq!(live["filled"], 6, "{live:#}");
    assert_eq!(live["fill_errors"], 0);
    assert_eq!(live["delete"]["samples"], 6);
    assert_eq!(live["delete_errors"], 0);
    assert!(number(live, "/held_s") >= 1.0);
    assert!(
        live["writer_lag"]["samples"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{live:#}"
    );

    let restart = &report["restart"];
    assert_eq!(
        restart["agents_online"], 3,
        "the agents came back: {restart:#}"
    );
    let (listening, all) = (
        number(restart, "/listening_ms"),
        number(restart, "/all_agents_ms"),
    );
    assert!(listening > 0.0 && all >= listening, "{restart:#}");

    // Each agent had a session before and after the restart.
    assert!(
        number(report, "/totals/agent_sessions") >= 6.0,
        "{report:#}"
    );
    assert!(number(report, "/totals/server_cpu_s") > 0.0);
}

#[tokio::test]
async fn bench_fleet_runs_every_phase_on_sqlite() {
    let report = bench_fleet(None, &[]).await;
    assert_plausible(&report, "sqlite");
    assert_eq!(report["setup"]["agent_connections"], 3, "one per agent");
}

#[tokio::test]
async fn bench_fleet_agents_can_share_connections() {
    // Two agents on one HTTP/2 connection, one on another; they come back after the restart
    // on the same (reconnected) connections.
    let report = bench_fleet(None, &["--agents-per-connection", "2"]).await;
    assert_plausible(&report, "sqlite");
    assert_eq!(report["setup"]["agent_connections"], 2);
}

#[tokio::test]
async fn bench_fleet_runs_every_phase_on_postgres() {
    let Ok(url) = std::env::var("SHOESVZ_TEST_POSTGRES_URL") else {
        shoes_vz_test_support::prerequisite_missing(
            "bench_fleet_runs_every_phase_on_postgres did not run",
            "set SHOESVZ_TEST_POSTGRES_URL \
             (e.g. postgres://shoesvz:shoesvz@127.0.0.1:5432/shoesvz_test) to test PostgreSQL",
        );
        return;
    };
    let report = bench_fleet(Some(&url), &[]).await;
    assert_plausible(&report, "postgres");
    let detail = report["setup"]["database_detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains("dropped after the run"), "{detail}");
}
