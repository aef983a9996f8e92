//! `shoes-vz bench control-plane`: what the control plane adds on top of the backend, measured
//! on an in-process cluster with the test backend.

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::output::{print_json, Output};
use crate::stats::{ms, p50_p95_json, percentile};
use anyhow::Context;
use shoes_vz_model::CloudId;
use shoes_vz_protocol::shoes::v1 as pb;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ControlPlaneArgs {
    /// Runners to create (all at once, in waves of the cluster's capacity).
    #[arg(long, default_value_t = 40)]
    runners: usize,
    /// Simulated agents.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Runners per agent.
    #[arg(long, default_value_t = 5)]
    max_runners: u32,
    /// Test-backend boot delay in milliseconds (subtracted from AddInstance latency).
    #[arg(long, default_value_t = 200)]
    boot_delay_ms: u64,
}

pub async fn run(args: ControlPlaneArgs, output: Output) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let mut options = ClusterOptions::new(dir.path(), "bench-token-0123456789");
    options.agents = args.agents.max(1);
    options.max_runners_per_agent = args.max_runners.max(1);
    options.boot_delay = Duration::from_millis(args.boot_delay_ms);
    options.metrics_listen = None;
    let cluster = LocalCluster::start(options).await?;
    cluster
        .wait_agents_online(cluster.options.agents as i64, Duration::from_secs(30))
        .await?;
    let capacity = cluster.options.agents * cluster.options.max_runners_per_agent as usize;
    let client = cluster.client().await?;

    let mut add_overhead = Vec::new();
    let mut agent_overhead = Vec::new();
    let mut delete_latency = Vec::new();
    let mut remaining = args.runners;
    let boot_delay = Duration::from_millis(args.boot_delay_ms);
    let load_before = super::load_line();
    let started = Instant::now();
    while remaining > 0 {
        let wave = remaining.min(capacity);
        remaining -= wave;
        let adds = (0..wave).map(|_| {
            let mut client = client.clone();
            async move {
                let t = Instant::now();
                let reply = client
                    .add_instance(pb::AddInstanceRequest {
                        runner_name: format!("myshoes-{}", uuid::Uuid::new_v4()),
                        setup_script: "true\n".into(),
                        resource_type: pb::ResourceType::Nano as i32,
                        labels: vec!["self-hosted".into()],
                    })
                    .await;
                (t.elapsed(), reply)
            }
        });
        let mut cloud_ids = Vec::new();
        for (elapsed, reply) in futures::future::join_all(adds).await {
            let reply = reply
                .context("AddInstance failed during the benchmark")?
                .into_inner();
            add_overhead.push(elapsed.saturating_sub(boot_delay));
            cloud_ids.push(reply.cloud_id);
        }
        // The agents' share, from their own timings while the runners still live.
        let statuses: Vec<_> = cluster
            .agents
            .iter()
            .flat_map(|agent| agent.manager.snapshot())
            .collect();
        for cloud_id in &cloud_ids {
            let Ok(runner_id) = CloudId::parse(cloud_id).map(|id| id.runner_id()) else {
                continue;
            };
            let timings = statuses
                .iter()
                .find(|status| status.runner_id == runner_id.as_str())
                .and_then(|status| status.timings);
            if let Some(t) = timings {
                let agent = Duration::from_millis(t.prepare_ms + t.boot_to_ssh_ms);
                agent_overhead.push(agent.saturating_sub(boot_delay));
            }
        }
        let deletes = cloud_ids.into_iter().map(|cloud_id| {
            let mut client = client.clone();
            async move {
                let t = Instant::now();
                let reply = client
                    .delete_instance(pb::DeleteInstanceRequest {
                        cloud_id,
                        labels: Vec::new(),
                    })
                    .await;
                (t.elapsed(), reply)
            }
        });
        for (elapsed, reply) in futures::future::join_all(deletes).await {
            reply.context("DeleteInstance failed during the benchmark")?;
            delete_latency.push(elapsed);
        }
    }
    let wall = started.elapsed();
    let push: Vec<Duration> = cluster
        .agents
        .iter()
        .flat_map(|a| a.manager.command_latencies())
        .collect();
    cluster.shutdown().await;

    if output.is_json() {
        return print_json(&serde_json::json!({
            "runners": args.runners,
            "agents": args.agents,
            "max_runners": args.max_runners,
            "boot_delay_ms": args.boot_delay_ms,
            "wall_s": wall.as_secs_f64(),
            "add_instance_overhead_ms": p50_p95_json(&add_overhead),
            "command_push_ms": p50_p95_json(&push),
            "delete_instance_ms": p50_p95_json(&delete_latency),
        }));
    }
    println!(
        "control plane: {} runners on {} agents x {} slots, test backend boot delay {} ms, {:.1} s wall",
        args.runners,
        args.agents,
        args.max_runners,
        args.boot_delay_ms,
        wall.as_secs_f64()
    );
    println!(
        "{:<46} {:>8} {:>10} {:>10}",
        "metric", "samples", "p50 ms", "p95 ms"
    );
    for (name, samples) in [
        ("AddInstance latency - boot delay (overhead)", &add_overhead),
        ("  of which the agent's start - boot delay", &agent_overhead),
        ("command push latency (server -> agent)", &push),
        ("DeleteInstance latency", &delete_latency),
    ] {
        println!(
            "{:<46} {:>8} {:>10} {:>10}",
            name,
            samples.len(),
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 95.0))
        );
    }
    println!("before: {load_before}; after: {}", super::load_line());
    Ok(())
}
