//! `shoes-vz dev`: the all-in-one local cluster (server + agent, embedded SQLite, loopback
//! only) in the foreground, optionally taking a few runners through their whole life.
//! What it keeps between runs, and starting clean: `dev_state`.

use super::dev_state;
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::fleet_client::FleetClient;
use crate::human;
use crate::output::{print_json_line, Output};
use crate::plugin_client::PluginHost;
use crate::stats::{millis, ms, p50_p95_json, percentile};
use crate::workspace_bin::find_or_build;
use anyhow::Context;
use shoes_vz_agent::config::BackendKind;
use shoes_vz_plugin::proto::myshoes;
use shoes_vz_protocol::shoes::v1 as pb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Hypervisor backend [default: qemu on Linux; on macOS vz when a vz template exists in
    /// --templates-dir; else test]. `test` plays VMs with loopback SSH servers and isolates
    /// nothing.
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// vz: the macOS templates to serve [default: the agent's templates_dir].
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// qemu: also make the test guest's warm template and take demo runners through both paths.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warm: bool,
    /// gRPC listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Prometheus /metrics listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// State, templates and runner bundles [default: <temp dir>/shoes-vz-dev, i.e.
    /// $TMPDIR/shoes-vz-dev]. A run continues the state it finds there (and says so in the
    /// default dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Start clean: forget the state an earlier run left in the default data dir (database,
    /// agents, runner bundles) before starting; the built templates are kept (a cache). Only
    /// for the default dir: with --data-dir, remove what you want yourself.
    #[arg(long, conflicts_with = "data_dir")]
    fresh: bool,
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

pub async fn run(args: DevArgs, output: Output) -> anyhow::Result<()> {
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
    let (data_dir, reused) = match args.data_dir {
        Some(dir) => {
            let reused = !dev_state::earlier_state(&dir).is_empty();
            (dir, reused)
        }
        None => {
            let dir = dev_state::default_data_dir();
            (dir.clone(), default_dir_state(&dir, args.fresh, output)?)
        }
    };
    let vz_templates = args
        .templates_dir
        .clone()
        .unwrap_or_else(|| shoes_vz_agent::config::AgentConfig::default().templates_dir);
    let backend = args
        .backend
        .unwrap_or_else(|| default_backend(&vz_templates));
    let generated = args.token.is_none();
    let token = args.token.unwrap_or_else(uuid_token);
    let mut options = ClusterOptions::new(&data_dir, &token);
    options.listen = args.listen;
    options.metrics_listen = Some(args.metrics_listen);
    options.backend = backend;
    options.warm = args.warm && matches!(backend, BackendKind::Qemu | BackendKind::Vz);
    options.agents = args.agents.max(1);
    options.max_runners_per_agent = args.max_runners;
    options.boot_delay = Duration::from_millis(args.boot_delay_ms);
    if backend == BackendKind::Vz {
        options.templates_dir = Some(vz_templates);
    }
    let cluster = LocalCluster::start(options).await?;
    cluster
        .wait_agents_online(cluster.options.agents as i64, Duration::from_secs(30))
        .await?;

    let addr = cluster.server.grpc_addr;
    let tokens_file = dev_state::write_tokens(
        &data_dir,
        &addr.to_string(),
        &token,
        &cluster.options.operator_token,
    )?;
    let metrics_url = cluster
        .server
        .metrics_addr
        .map(|metrics| format!("http://{metrics}/metrics"));
    if output.is_json() {
        // Never a token itself: scripts read them from the tokens file.
        print_json_line(&serde_json::json!({
            "event": "up",
            "backend": backend.as_str(),
            "grpc_addr": addr.to_string(),
            "metrics_url": metrics_url,
            "data_dir": data_dir,
            "tokens_file": tokens_file,
            "reused_state": reused,
        }))?;
        if backend == BackendKind::Test {
            eprintln!(
                "note: the test backend's VMs are loopback SSH servers; they isolate nothing"
            );
        }
    } else {
        print_up(&cluster, backend, &data_dir, &tokens_file, generated);
    }

    if args.demo > 0 {
        let host = PluginHost {
            plugin: find_or_build("shoes-vz-plugin", "shoes-vz-plugin", "SHOESVZ_PLUGIN")?,
            server_addr: addr.to_string(),
            token: token.clone(),
        };
        let client = cluster.client().await?;
        let mut paths = vec![("cold", vec!["self-hosted".to_string(), "linux".to_string()])];
        if backend == BackendKind::Vz {
            // One template: its runners restore a warm slot when slots exist and --warm is
            // on (vz.warm_slots), else boot cold.
            let path = if cluster.options.warm { "warm" } else { "cold" };
            paths = vec![(path, vec!["self-hosted".to_string()])];
        } else if cluster.options.warm {
            paths.push(("warm", vec!["self-hosted".to_string(), "warm".to_string()]));
        }
        demo(&host, client, args.demo, &paths, output).await?;
    }
    if !args.exit_after_demo {
        human!(
            output,
            "serving; Ctrl-C to stop (runners are torn down on the way out)"
        );
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
    }
    cluster.shutdown().await;
    Ok(())
}

/// Whether the default data dir holds an earlier run's state this run continues: with
/// --fresh it is forgotten first; without, a warning says so and how to start clean.
fn default_dir_state(dir: &std::path::Path, fresh: bool, output: Output) -> anyhow::Result<bool> {
    if fresh {
        let removed = dev_state::forget_state(dir)?;
        if !removed.is_empty() {
            human!(
                output,
                "--fresh: forgot the earlier run's state in {} ({}); built templates are kept",
                dir.display(),
                removed.join(", ")
            );
        }
        return Ok(false);
    }
    let found = dev_state::earlier_state(dir);
    if found.is_empty() {
        return Ok(false);
    }
    eprintln!("{}", dev_state::reuse_warning(dir, &found));
    Ok(true)
}

/// What a person needs once the cluster is up: addresses, tokens, how to try it.
fn print_up(
    cluster: &LocalCluster,
    backend: BackendKind,
    data_dir: &std::path::Path,
    tokens_file: &std::path::Path,
    generated: bool,
) {
    let addr = cluster.server.grpc_addr;
    let token = &cluster.options.token;
    println!(
        "shoes-vz dev cluster is up ({} backend, data in {})",
        backend.as_str(),
        data_dir.display()
    );
    println!("  gRPC:    {addr}  (ShoesService, OperatorService and AgentService)");
    if let Some(metrics) = cluster.server.metrics_addr {
        println!("  metrics: http://{metrics}/metrics");
    }
    if generated {
        println!(
            "  tokens:  myshoes {token}   (generated; pass --token or SHOESVZ_TOKEN to choose one)"
        );
    } else {
        println!("  tokens:  myshoes from --token / SHOESVZ_TOKEN");
    }
    println!(
        "           operator {}   (myshoes' token may only add and delete runners)",
        cluster.options.operator_token
    );
    println!(
        "  tokens file: {}  (set -a; . {}; set +a)",
        tokens_file.display(),
        tokens_file.display()
    );
    println!("  try:     SHOESVZ_SERVER_ADDR={addr} SHOESVZ_OPERATOR_TOKEN=<operator token> shoes-vz runners list");
    if backend == BackendKind::Test {
        println!(
            "  note:    the test backend's VMs are loopback SSH servers; they isolate nothing"
        );
    }
}

fn uuid_token() -> String {
    format!("dev-{}", uuid::Uuid::new_v4().simple())
}

fn default_backend(vz_templates: &std::path::Path) -> BackendKind {
    if cfg!(target_os = "macos") {
        let found = shoes_vz_agent::template::load_all(vz_templates, "vz")
            .ok()
            .and_then(|templates| templates.into_keys().next());
        let (backend, note) = mac_backend(found.as_deref(), vz_templates);
        if let Some(note) = note {
            eprintln!("{note}");
        }
        return backend;
    }
    if !cfg!(target_os = "linux") {
        return BackendKind::Test;
    }
    let missing: Vec<&str> = [
        "qemu-system-x86_64",
        "apt-get",
        "dpkg-deb",
        "mkfs.ext4",
        "cpio",
    ]
    .into_iter()
    .filter(|tool| crate::workspace_bin::which(tool).is_none())
    .collect();
    if missing.is_empty() {
        return BackendKind::Qemu;
    }
    eprintln!(
        "WARNING: {} not found, so this runs the TEST backend (loopback SSH servers, no VMs, no isolation). \
         For real VMs: apt-get install qemu-system-x86 qemu-utils e2fsprogs cpio xz-utils (see .ci/qemu-deps.sh), \
         or pass --backend explicitly.",
        missing.join(", ")
    );
    BackendKind::Test
}

/// On macOS: vz when a vz template exists, else one line on how to get one and the test
/// backend.
fn mac_backend(vz_template: Option<&str>, dir: &std::path::Path) -> (BackendKind, Option<String>) {
    match vz_template {
        Some(_) => (BackendKind::Vz, None),
        None => (
            BackendKind::Test,
            Some(format!(
                "no vz template in {}: make one with `shoes-vz template create --ipsw latest --name macos` or `shoes-vz template import-tart ~/.tart/vms/NAME --name macos`; using the TEST backend (no VMs) for now",
                dir.display()
            )),
        ),
    }
}

/// One runner's life as seen from myshoes' side.
struct Life {
    path: &'static str,
    add: Duration,
    delete: Duration,
    timings: pb::PhaseTimings,
}

async fn demo(
    host: &PluginHost,
    client: FleetClient,
    count: usize,
    paths: &[(&'static str, Vec<String>)],
    output: Output,
) -> anyhow::Result<()> {
    human!(
        output,
        "\ntaking {count} runner(s) per path through the plugin protocol ({}): AddInstance → ssh-ready → setup → running → DeleteInstance ...",
        host.plugin.display()
    );
    let mut lives = Vec::new();
    for (path, labels) in paths {
        for _ in 0..count {
            lives.push(one_life(host, client.clone(), path, labels, output).await?);
        }
    }
    if output.is_json() {
        return print_json_line(&demo_json(&lives, paths));
    }
    println!(
        "\n{:<8} {:<5} {:>9} {:>11} {:>12} {:>9} {:>11} {:>12} {:>11}",
        "runner",
        "path",
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
            "{:<8} {:<5} {:>9} {:>11} {:>12} {:>9} {:>11} {:>12} {:>11}",
            index + 1,
            life.path,
            t.clone_ms,
            t.boot_to_ip_ms,
            t.boot_to_ssh_ms,
            t.setup_ms,
            t.startup_ms,
            ms(Some(life.add)),
            ms(Some(life.delete))
        );
    }
    for (path, _) in paths {
        let add: Vec<Duration> = lives
            .iter()
            .filter(|l| l.path == *path)
            .map(|l| l.add)
            .collect();
        println!(
            "{path}: AddInstance through the plugin P50 {} ms, P95 {} ms",
            ms(percentile(&add, 50.0)),
            ms(percentile(&add, 95.0))
        );
    }
    Ok(())
}

/// `{"event": "demo", "runners": [...], "add_instance_ms": {path: percentiles}}`.
fn demo_json(lives: &[Life], paths: &[(&'static str, Vec<String>)]) -> serde_json::Value {
    let runners: Vec<serde_json::Value> = lives
        .iter()
        .map(|life| {
            let t = &life.timings;
            serde_json::json!({
                "path": life.path,
                "add_instance_ms": millis(life.add),
                "delete_instance_ms": millis(life.delete),
                "timings_ms": {
                    "clone": t.clone_ms, "boot_to_ip": t.boot_to_ip_ms,
                    "boot_to_ssh": t.boot_to_ssh_ms, "setup": t.setup_ms,
                    "startup": t.startup_ms,
                },
            })
        })
        .collect();
    let add_instance: serde_json::Map<String, serde_json::Value> = paths
        .iter()
        .map(|(path, _)| {
            let add: Vec<Duration> = lives
                .iter()
                .filter(|l| l.path == *path)
                .map(|l| l.add)
                .collect();
            (path.to_string(), p50_p95_json(&add))
        })
        .collect();
    serde_json::json!({"event": "demo", "runners": runners, "add_instance_ms": add_instance})
}

async fn one_life(
    host: &PluginHost,
    mut client: FleetClient,
    path: &'static str,
    labels: &[String],
    output: Output,
) -> anyhow::Result<Life> {
    let runner_name = format!("myshoes-{}", uuid::Uuid::new_v4());
    let started = Instant::now();
    let added = host
        .add_instance(myshoes::AddInstanceRequest {
            runner_name: runner_name.clone(),
            setup_script: "echo \"setup ran for $USER\" > \"$HOME/setup-marker\"\n".into(),
            resource_type: myshoes::ResourceType::Nano as i32,
            labels: labels.to_vec(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("AddInstance for {runner_name} failed: {status}"))?;
    let add = started.elapsed();
    human!(
        output,
        "  {runner_name} ({path}): ssh-ready as {} ({}) after {:.0} ms",
        added.cloud_id,
        added.ip_address,
        add.as_secs_f64() * 1000.0
    );
    let runner = wait_running(&mut client, &added.cloud_id).await?;
    let started = Instant::now();
    host.delete_instance(&added.cloud_id)
        .await
        .map_err(|status| {
            anyhow::anyhow!("DeleteInstance for {} failed: {status}", added.cloud_id)
        })?;
    Ok(Life {
        path,
        add,
        delete: started.elapsed(),
        timings: runner.timings.unwrap_or_default(),
    })
}

/// The setup script runs after AddInstance answers; wait until the runner reports running.
async fn wait_running(client: &mut FleetClient, cloud_id: &str) -> anyhow::Result<pb::RunnerInfo> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runner = client.get_runner(cloud_id).await?;
        match runner.state.as_str() {
            "running" => return Ok(runner),
            "error" | "deleted" => anyhow::bail!("runner {cloud_id} failed: {}", runner.error),
            _ if Instant::now() > deadline => {
                anyhow::bail!(
                    "runner {cloud_id} not running after 120 s (state {})",
                    runner.state
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_uses_vz_with_a_template_and_says_how_to_get_one_without() {
        let dir = std::path::Path::new("/opt/myshoes/vz/templates");
        assert_eq!(mac_backend(Some("macos-26"), dir), (BackendKind::Vz, None));
        let (backend, note) = mac_backend(None, dir);
        assert_eq!(backend, BackendKind::Test);
        let note = note.expect("one line");
        assert_eq!(note.lines().count(), 1);
        assert!(
            note.contains("--ipsw latest") && note.contains("import-tart"),
            "{note}"
        );
        assert!(note.contains("/opt/myshoes/vz/templates"), "{note}");
    }
}
