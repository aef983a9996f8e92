//! `shoes-vz dev`: the all-in-one local cluster (server + agent, embedded SQLite, loopback
//! only) in the foreground, optionally taking a few runners through their whole life.

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::stats::{ms, percentile};
use anyhow::Context;
use shoes_vz_agent::config::BackendKind;
use shoes_vz_protocol::client::ShoesClient;
use shoes_vz_protocol::shoes::v1 as pb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Hypervisor backend. `test` plays VMs with loopback SSH servers and isolates nothing.
    #[arg(long, value_enum, default_value_t = BackendKind::Test)]
    backend: BackendKind,
    /// gRPC listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Prometheus /metrics listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// State, templates and runner bundles [default: <temp dir>/shoes-vz-dev].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bearer token clients must present; a random one is made when unset.
    #[arg(long, env = "SHOESVZ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Agents to run in the process.
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// Runners each agent may run at once.
    #[arg(long, default_value_t = 2)]
    max_runners: u32,
    /// How long a test-backend VM takes to boot, in milliseconds.
    #[arg(long, default_value_t = 500)]
    boot_delay_ms: u64,
    /// Take this many runners through their whole life and print the timing table.
    #[arg(long, default_value_t = 0)]
    demo: usize,
    /// Exit after the demo instead of serving until Ctrl-C.
    #[arg(long)]
    exit_after_demo: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    for (what, addr) in [
        ("--listen", args.listen),
        ("--metrics-listen", args.metrics_listen),
    ] {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "{what} {addr} is not a loopback address: `dev` serves on this machine only"
            );
        }
    }
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| std::env::temp_dir().join("shoes-vz-dev"));
    let generated = args.token.is_none();
    let token = args.token.unwrap_or_else(uuid_token);
    let mut options = ClusterOptions::new(&data_dir, &token);
    options.listen = args.listen;
    options.metrics_listen = Some(args.metrics_listen);
    options.backend = args.backend;
    options.agents = args.agents.max(1);
    options.max_runners_per_agent = args.max_runners;
    options.boot_delay = Duration::from_millis(args.boot_delay_ms);
    let cluster = LocalCluster::start(options).await?;
    cluster
        .wait_agents_online(cluster.options.agents as i64, Duration::from_secs(30))
        .await?;

    let addr = cluster.server.grpc_addr;
    println!(
        "shoes-vz dev cluster is up ({} backend, data in {})",
        args.backend.as_str(),
        data_dir.display()
    );
    println!("  gRPC:    {addr}  (ShoesService and AgentService)");
    if let Some(metrics) = cluster.server.metrics_addr {
        println!("  metrics: http://{metrics}/metrics");
    }
    if generated {
        println!("  token:   {token}   (generated; pass --token or SHOESVZ_TOKEN to choose one)");
    } else {
        println!("  token:   from --token / SHOESVZ_TOKEN");
    }
    println!("  try:     SHOESVZ_SERVER_ADDR={addr} SHOESVZ_TOKEN=<token> shoes-vz runners list");
    if args.backend == BackendKind::Test {
        println!(
            "  note:    the test backend's VMs are loopback SSH servers; they isolate nothing"
        );
    }

    if args.demo > 0 {
        let client = cluster.client().await?;
        demo(client, args.demo).await?;
    }
    if !args.exit_after_demo {
        println!("serving; Ctrl-C to stop (runners are torn down on the way out)");
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
    }
    cluster.shutdown().await;
    Ok(())
}

fn uuid_token() -> String {
    format!("dev-{}", uuid::Uuid::new_v4().simple())
}

/// One runner's life as seen from myshoes' side.
struct Life {
    add: Duration,
    delete: Duration,
    timings: pb::PhaseTimings,
}

async fn demo(client: ShoesClient, count: usize) -> anyhow::Result<()> {
    println!("\ntaking {count} runner(s) through AddInstance → ssh-ready → setup → running → DeleteInstance ...");
    let mut lives = Vec::new();
    for _ in 0..count {
        lives.push(one_life(client.clone()).await?);
    }
    println!(
        "\n{:<8} {:>9} {:>11} {:>12} {:>9} {:>11} {:>12} {:>11}",
        "runner",
        "clone ms",
        "boot→IP ms",
        "boot→SSH ms",
        "setup ms",
        "startup ms",
        "AddInst. ms",
        "Delete ms"
    );
    for (index, life) in lives.iter().enumerate() {
        let t = &life.timings;
        println!(
            "{:<8} {:>9} {:>11} {:>12} {:>9} {:>11} {:>12} {:>11}",
            index + 1,
            t.clone_ms,
            t.boot_to_ip_ms,
            t.boot_to_ssh_ms,
            t.setup_ms,
            t.startup_ms,
            ms(Some(life.add)),
            ms(Some(life.delete))
        );
    }
    let add: Vec<Duration> = lives.iter().map(|l| l.add).collect();
    println!(
        "AddInstance P50 {} ms, P95 {} ms",
        ms(percentile(&add, 50.0)),
        ms(percentile(&add, 95.0))
    );
    Ok(())
}

async fn one_life(mut client: ShoesClient) -> anyhow::Result<Life> {
    let runner_name = format!("myshoes-{}", uuid::Uuid::new_v4());
    let started = Instant::now();
    let added = client
        .add_instance(pb::AddInstanceRequest {
            runner_name: runner_name.clone(),
            setup_script: "echo \"setup ran for $USER in $HOME\" > setup-marker\n".into(),
            resource_type: pb::ResourceType::Small as i32,
            labels: vec!["self-hosted".into(), "test".into()],
        })
        .await
        .with_context(|| format!("AddInstance for {runner_name} failed"))?
        .into_inner();
    let add = started.elapsed();
    println!(
        "  {runner_name}: ssh-ready as {} ({}) after {:.0} ms",
        added.cloud_id,
        added.ip_address,
        add.as_secs_f64() * 1000.0
    );
    let runner = wait_running(&mut client, &added.cloud_id).await?;
    let started = Instant::now();
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: added.cloud_id.clone(),
            labels: Vec::new(),
        })
        .await
        .with_context(|| format!("DeleteInstance for {} failed", added.cloud_id))?;
    Ok(Life {
        add,
        delete: started.elapsed(),
        timings: runner.timings.unwrap_or_default(),
    })
}

/// The setup script runs after AddInstance answers; wait until the runner reports running.
async fn wait_running(client: &mut ShoesClient, cloud_id: &str) -> anyhow::Result<pb::RunnerInfo> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runner = client
            .get_runner(pb::GetRunnerRequest {
                cloud_id: cloud_id.to_string(),
            })
            .await?
            .into_inner()
            .runner
            .context("server returned no runner")?;
        match runner.state.as_str() {
            "running" => return Ok(runner),
            "error" | "deleted" => anyhow::bail!("runner {cloud_id} failed: {}", runner.error),
            _ if Instant::now() > deadline => anyhow::bail!(
                "runner {cloud_id} not running after 60 s (state {})",
                runner.state
            ),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
