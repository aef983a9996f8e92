//! Restarts: the server keeps every runner across a restart, and a restarted agent removes
//! what its earlier process left behind while the server's view converges.

mod common;

use common::*;
use shoes_vz_agent::RunningAgent;
use shoes_vz_cli::cluster::LocalCluster;
use shoes_vz_protocol::shoes::v1 as pb;
use shoes_vz_server::RunningServer;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_still_lists_and_deletes_its_runners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let cloud_id = client
        .add_instance(add_request("myshoes-survivor", "true\n"))
        .await
        .expect("add")
        .into_inner()
        .cloud_id;
    wait_state(&mut client, &cloud_id, "running").await;

    // Stop the server only; the agent keeps its runner and keeps trying to reconnect.
    drop(client);
    cluster
        .restart_server()
        .await
        .expect("second server on the same database");

    let mut client = cluster.client().await.expect("client to the new server");
    let listed = client.list_runners(false).await.expect("list");
    assert_eq!(listed.len(), 1, "the restarted server knows the runner");
    assert_eq!(listed[0].cloud_id, cloud_id);
    assert_eq!(listed[0].runner_name, "myshoes-survivor");

    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await
        .expect("agent reconnects to the new server");
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: cloud_id.clone(),
            labels: vec![],
        })
        .await
        .expect("delete after restart");
    wait_state(&mut client, &cloud_id, "deleted").await;
    assert_eq!(
        bundles(&cluster.runners_dir(0)),
        0,
        "the VM's bundle is gone"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_recorded_while_the_agent_is_away_happens_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let cloud_id = client
        .add_instance(add_request("myshoes-away", "true\n"))
        .await
        .expect("add")
        .into_inner()
        .cloud_id;
    wait_state(&mut client, &cloud_id, "running").await;

    // The server goes away, a new one starts with the same database but on another port,
    // so the agent cannot reach it: the runner's agent is offline there.
    cluster.server.shutdown().await;
    let mut away = cluster.options.clone();
    away.metrics_listen = None;
    let interim = RunningServer::start(LocalCluster::server_config(&away))
        .await
        .expect("interim server");
    let mut interim_client = shoes_vz_protocol::client::connect_shoes(
        &interim.grpc_addr.to_string(),
        TOKEN,
        &Default::default(),
    )
    .await
    .expect("client");
    interim_client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: cloud_id.clone(),
            labels: vec![],
        })
        .await
        .expect("deletion is accepted and recorded while the agent is offline");
    let mut interim = interim;
    interim.shutdown().await;
    drop(interim);

    // The original server restarts on the agent's address with the shared database.
    cluster.restart_server().await.expect("server back");
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await
        .expect("agent back");
    let runners_dir = cluster.runners_dir(0);
    wait_until("the recorded deletion to reach the agent", || {
        bundles(&runners_dir) == 0
    })
    .await;
    let mut client = cluster.client().await.expect("client");
    assert_eq!(
        wait_state(&mut client, &cloud_id, "deleted").await.state,
        "deleted"
    );
    let again = client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id,
            labels: vec![],
        })
        .await
        .expect_err("already deleted");
    assert_eq!(again.code(), Code::NotFound);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_removes_orphans_and_the_server_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(options(dir.path(), 1, 2)).await;
    let mut client = cluster.client().await.expect("client");
    let cloud_id = client
        .add_instance(add_request("myshoes-orphaned", "true\n"))
        .await
        .expect("add")
        .into_inner()
        .cloud_id;
    wait_state(&mut client, &cloud_id, "running").await;
    let runners_dir = cluster.runners_dir(0);
    assert_eq!(bundles(&runners_dir), 1);

    // The agent process dies: its VM goes with it, its bundle stays on disk.
    let agent = cluster.agents.remove(0);
    let agent_id = agent.agent_id.clone();
    agent.abandon().await;
    // Plus a half-built bundle from an even earlier crash.
    std::fs::create_dir_all(runners_dir.join("0123456789abcdef0123456789abcdef.bundle"))
        .expect("stray bundle");
    assert_eq!(bundles(&runners_dir), 2);

    let restarted = RunningAgent::start(cluster.agent_config(0))
        .await
        .expect("agent restarts");
    assert_eq!(restarted.agent_id, agent_id, "the agent keeps its identity");
    assert_eq!(bundles(&runners_dir), 0, "orphan bundles removed at start");
    cluster.agents.push(restarted);

    let runner = wait_state(&mut client, &cloud_id, "deleted").await;
    assert!(
        runner.error.contains("no longer has this runner"),
        "{}",
        runner.error
    );
    // myshoes holds the cloud_id: its DeleteInstance of the lost runner still answers OK.
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: cloud_id.clone(),
            labels: vec![],
        })
        .await
        .expect("DeleteInstance of a runner that ended on its own");
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await
        .expect("online");
    // The lost runner's slot is free: both slots can be used.
    for name in ["myshoes-after-1", "myshoes-after-2"] {
        client
            .add_instance(add_request(name, "true\n"))
            .await
            .expect("slot free");
    }
    cluster.shutdown().await;
}
