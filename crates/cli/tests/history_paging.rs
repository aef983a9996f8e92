//! A server with 20,000 runners in its history: `shoes-vz runners list --all` returns every
//! one, page by page, and no ListRunners answer comes near a client's message limit, even when
//! runners carry the most labels AddInstance accepts.

mod common;

use shoes_vz_cli::cluster::LocalCluster;
use shoes_vz_model::{AgentId, ResourceType, RunnerId, RunnerState};
use shoes_vz_protocol::client::{connect_operator, ConnectOptions};
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_server::store::{KnownStates, RunnerRecord, Store, Timings, Write};
use shoes_vz_server::RunningServer;
use std::collections::HashSet;
use std::time::Duration;

const RUNNERS: usize = 20_000;
/// Runners with 64 labels of 256 bytes (AddInstance's limits): ~16 KiB each.
const HEAVY_EVERY: usize = 50;
const ONE_MIB: usize = 1024 * 1024;

fn deleted_runner(agent_id: &AgentId, index: usize) -> RunnerRecord {
    let labels = if index.is_multiple_of(HEAVY_EVERY) {
        (0..64)
            .map(|l| format!("{l:03}{}", "x".repeat(253)))
            .collect()
    } else {
        vec!["self-hosted".into(), "linux".into(), "myshoes".into()]
    };
    // Yesterday: well within history.retention, so the server keeps them all.
    let at = shoes_vz_server::store::now_ms() - 86_400_000 + i64::try_from(index).expect("small");
    RunnerRecord {
        runner_id: RunnerId::generate(),
        runner_name: format!("myshoes-{index:08}"),
        agent_id: agent_id.clone(),
        template: "linux".into(),
        resource_type: ResourceType::Small,
        vcpus: 2,
        memory_mib: 2048,
        labels,
        state: RunnerState::Deleted,
        delete_requested: true,
        answered: true,
        ip_address: "10.0.2.15".into(),
        guest_runner_state: "finished".into(),
        error: String::new(),
        end_reason: "the runner finished its job".into(),
        created_at_ms: at,
        updated_at_ms: at + 60_000,
        timings: Timings::default(),
        job_started_at_ms: Some(at + 10_000),
        job_finished_at_ms: Some(at + 50_000),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_runners_list_completely_in_small_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = common::options(dir.path(), 0, 1);
    options.metrics_listen = None;
    let config = LocalCluster::server_config(&options);

    // The history, written as the server's writer writes it: batches of one transaction.
    let store = Store::open(&config.database_url).await.expect("store");
    let agent_id = AgentId::generate();
    let runners: Vec<RunnerRecord> = (0..RUNNERS).map(|i| deleted_runner(&agent_id, i)).collect();
    let mut known = KnownStates::default();
    for chunk in runners.chunks(1000) {
        let writes: Vec<Write<'_>> = chunk.iter().map(Write::InsertRunner).collect();
        store
            .apply(&writes, &mut known)
            .await
            .expect("insert a batch");
    }
    drop(store);

    let mut server = RunningServer::start(config).await.expect("server");
    let addr = server.grpc_addr.to_string();

    // A client that refuses any message over 1 MiB: every page must fit.
    let mut client = connect_operator(&addr, &options.operator_token, &ConnectOptions::default())
        .await
        .expect("connect")
        .max_decoding_message_size(ONE_MIB);
    let mut seen = HashSet::new();
    let mut largest = 0;
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_runners(op::ListRunnersRequest {
                include_deleted: true,
                page_size: 1000,
                page_token,
            })
            .await
            .expect("a page under 1 MiB")
            .into_inner();
        largest = largest.max(prost::Message::encoded_len(&page));
        pages += 1;
        for runner in &page.runners {
            assert!(
                seen.insert(runner.runner_id.clone()),
                "listed twice: {}",
                runner.runner_id
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), RUNNERS, "every runner, once");
    assert!(
        largest < ONE_MIB,
        "largest ListRunners answer: {largest} bytes"
    );
    eprintln!("{RUNNERS} runners in {pages} pages; the largest answer was {largest} bytes");

    // The operator's command follows the pages too.
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shoes-vz"))
            .args(["runners", "list", "--all", "--output", "json"])
            .env("SHOESVZ_SERVER_ADDR", &addr)
            .env("SHOESVZ_OPERATOR_TOKEN", &options.operator_token)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI finishes")
    .expect("the CLI runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), RUNNERS);
    let ids: HashSet<&str> = listed
        .iter()
        .filter_map(|r| r["runner_id"].as_str().or(r["cloud_id"].as_str()))
        .collect();
    assert_eq!(ids.len(), RUNNERS, "no runner listed twice");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_runners_past_retention_are_pruned_by_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = common::options(dir.path(), 0, 1);
    options.metrics_listen = None;
    let config = LocalCluster::server_config(&options);
    assert_eq!(
        config.history.retention,
        Duration::from_secs(30 * 86_400),
        "the documented default"
    );
    let store = Store::open(&config.database_url).await.expect("store");
    let agent_id = AgentId::generate();
    let mut old = deleted_runner(&agent_id, 0);
    old.created_at_ms = shoes_vz_server::store::now_ms() - 31 * 86_400_000;
    let recent = deleted_runner(&agent_id, 1);
    store
        .apply(
            &[Write::InsertRunner(&old), Write::InsertRunner(&recent)],
            &mut KnownStates::default(),
        )
        .await
        .expect("insert");
    drop(store);

    let mut server = RunningServer::start(config).await.expect("server");
    let mut client = connect_operator(
        &server.grpc_addr.to_string(),
        &options.operator_token,
        &ConnectOptions::default(),
    )
    .await
    .expect("connect");
    let get = |id: &RunnerId| op::GetRunnerRequest {
        cloud_id: id.cloud_id().to_string(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_runner(get(&old.runner_id)).await {
            Err(status) if status.code() == tonic::Code::NotFound => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the 31-day-old runner was never pruned: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = client
        .get_runner(get(&recent.runner_id))
        .await
        .expect("yesterday's runner stays")
        .into_inner();
    assert_eq!(kept.history.len(), 1);
    server.shutdown().await;
}
