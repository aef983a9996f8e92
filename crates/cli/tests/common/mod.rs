//! Helpers shared by the cluster tests.
#![allow(dead_code)]

pub mod processes;

use shoes_vz_cli::cluster::{ClusterOptions, LocalCluster};
use shoes_vz_cli::fleet_client::FleetClient;
use shoes_vz_protocol::shoes::v1 as pb;
use std::path::Path;
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789";

pub fn options(dir: &Path, agents: usize, max_runners: u32) -> ClusterOptions {
    let mut options = ClusterOptions::new(dir, TOKEN);
    options.agents = agents;
    options.max_runners_per_agent = max_runners;
    options.boot_delay = Duration::from_millis(300);
    options.add_instance_timeout = Duration::from_secs(60);
    options
}

pub async fn start(options: ClusterOptions) -> LocalCluster {
    let agents = options.agents as i64;
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    cluster
        .wait_agents_online(agents, Duration::from_secs(30))
        .await
        .expect("agents online");
    cluster
}

pub fn add_request(name: &str, script: &str) -> pb::AddInstanceRequest {
    pb::AddInstanceRequest {
        runner_name: name.to_string(),
        setup_script: script.to_string(),
        resource_type: pb::ResourceType::Small as i32,
        labels: vec!["self-hosted".into(), "linux".into()],
    }
}

pub async fn get(client: &mut FleetClient, cloud_id: &str) -> pb::RunnerInfo {
    client.get_runner(cloud_id).await.expect("get runner")
}

/// Polls (test-side only) until the runner reaches `state`.
pub async fn wait_state(client: &mut FleetClient, cloud_id: &str, state: &str) -> pb::RunnerInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runner = get(client, cloud_id).await;
        if runner.state == state {
            return runner;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runner {cloud_id} stuck in {} (error {:?}) waiting for {state}",
            runner.state,
            runner.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn bundles(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.count())
        .unwrap_or(0)
}
