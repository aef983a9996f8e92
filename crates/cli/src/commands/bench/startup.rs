//! `shoes-vz bench startup`: runner startup on the QEMU backend, cold and warm, against the
//! same guest booted by a bare `qemu` command line with an `ssh` loop, all in one run.

use crate::cluster::{ClusterOptions, LocalCluster, QEMU_GUEST_MEMORY_MIB, QEMU_GUEST_VCPUS};
use crate::fleet_client::FleetClient;
use crate::output::{print_json, Output};
use crate::stats::{ms, p50_p95_json, percentile};
use anyhow::Context;
use shoes_vz_agent::config::{BackendKind, QemuConfig};
use shoes_vz_agent::hypervisor::qemu::accel;
use shoes_vz_agent::{ssh, template};
use shoes_vz_guest_config::ApiToken;
use shoes_vz_guest_image::bench::{bare_boot_to_ssh, BareBoot};
use shoes_vz_protocol::agent::v1 as agent_pb;
use shoes_vz_protocol::shoes::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct StartupArgs {
    /// Runs of each kind (cold, warm, bare), interleaved.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Cluster data (templates are built here on first use) [default: a temp dir].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Default)]
struct Samples {
    clone: Vec<Duration>,
    prepare: Vec<Duration>,
    vm_start: Vec<Duration>,
    refresh: Vec<Duration>,
    boot_to_ip: Vec<Duration>,
    boot_to_ssh: Vec<Duration>,
    total: Vec<Duration>,
}

/// One runner's timings: the server's, and the agent's finer split of its start.
struct Timings {
    server: pb::PhaseTimings,
    agent: Option<agent_pb::PhaseTimings>,
}

impl Samples {
    fn push(&mut self, timings: &Timings) {
        let t = &timings.server;
        self.clone.push(Duration::from_millis(t.clone_ms));
        self.boot_to_ip.push(Duration::from_millis(t.boot_to_ip_ms));
        self.boot_to_ssh
            .push(Duration::from_millis(t.boot_to_ssh_ms));
        self.total.push(Duration::from_millis(t.startup_ms));
        if let Some(agent) = &timings.agent {
            self.prepare.push(Duration::from_millis(agent.prepare_ms));
            self.vm_start.push(Duration::from_millis(agent.vm_start_ms));
            // Only a restored guest is refreshed.
            if agent.refresh_ms > 0 {
                self.refresh.push(Duration::from_millis(agent.refresh_ms));
            }
        }
    }
}

pub async fn run(args: StartupArgs, output: Output) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut options = ClusterOptions::new(&data_dir, "bench-token-0123456789");
    options.backend = BackendKind::Qemu;
    options.warm = true;
    options.max_runners_per_agent = 1;
    options.metrics_listen = None;
    let cluster = LocalCluster::start(options).await?;
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await?;
    let mut client = cluster.client().await?;
    let base = cold_template(&data_dir.join("templates"))?;
    let bare_dir = tempfile::tempdir()?;
    let bare = bare_boot(&base, bare_dir.path())?;

    let (mut cold, mut warm, mut bare_ssh) = (Samples::default(), Samples::default(), Vec::new());
    let load_before = super::load_line();
    let started = Instant::now();
    for run in 0..args.runs.max(1) {
        cold.push(
            &one_runner(&cluster, &mut client, &["linux"])
                .await
                .with_context(|| format!("cold run {run}"))?,
        );
        warm.push(
            &one_runner(&cluster, &mut client, &["warm"])
                .await
                .with_context(|| format!("warm run {run}"))?,
        );
        let disk = bare_dir.path().join("disk.img");
        shoes_vz_agent::bundle::clone_file(
            &base.dir.join("Disk.img"),
            &disk,
            cluster_clone_mode(bare_dir.path()),
        )?;
        let mut boot = bare.clone();
        boot.disks = vec![disk.clone()];
        bare_ssh.push(bare_boot_to_ssh(&boot).await?.ssh_ready);
        std::fs::remove_file(&disk)?;
    }
    let wall = started.elapsed();
    let fallbacks = cluster
        .server
        .fleet
        .metrics()
        .render(&cluster.server.fleet.gauges());
    cluster.shutdown().await;
    if output.is_json() {
        return print_json(&to_json(
            args.runs, wall, &cold, &warm, &bare_ssh, &fallbacks,
        ));
    }
    print(args.runs, wall, &cold, &warm, &bare_ssh, &fallbacks);
    println!("before: {load_before}; after: {}", super::load_line());
    Ok(())
}

fn cluster_clone_mode(dir: &Path) -> shoes_vz_agent::config::CloneMode {
    if shoes_vz_agent::bundle::reflink_supported(dir) {
        shoes_vz_agent::config::CloneMode::Reflink
    } else {
        shoes_vz_agent::config::CloneMode::Copy
    }
}

fn cold_template(templates: &Path) -> anyhow::Result<template::Template> {
    let all = template::load_all(templates, "qemu")?;
    all.into_values()
        .find(|t| t.metadata.saved_state.is_none())
        .context("no cold qemu template was built")
}

/// The same guest outside shoes-vz: its kernel and initramfs, a config disk with a key the
/// `ssh` loop logs in with (the guest's runner-agent installs it, as for a runner).
fn bare_boot(base: &template::Template, dir: &Path) -> anyhow::Result<BareBoot> {
    let client = ssh::generate_ed25519()?;
    let host = ssh::generate_ed25519()?;
    let key_file = dir.join("id_ed25519");
    ssh::write_private_key_openssh(&client, &key_file)?;
    let config = shoes_vz_agent::runner::guest::guest_config(
        "bare",
        ApiToken::generate()?,
        "http://10.0.2.2:9/v1/notify",
        &base.metadata.ssh_user,
        base.metadata
            .guest_agent
            .as_ref()
            .map_or(template::MYSHOES_RUNNER_DIR, |agent| {
                agent.runner_dir.as_str()
            }),
        client.public_key(),
        &host,
    )?;
    let config_disk = dir.join("config.img");
    shoes_vz_guest_config::write_image(&config_disk, &config)?;
    let boot = base
        .metadata
        .linux_boot
        .as_ref()
        .context("the test guest has no linuxBoot")?;
    let qemu = QemuConfig::default();
    Ok(BareBoot {
        qemu_binary: qemu.binary.clone(),
        accel: accel::resolve(qemu.accel),
        kernel: base.dir.join(&boot.kernel),
        initrd: base.dir.join(
            boot.initrd
                .as_deref()
                .context("the test guest has no initrd")?,
        ),
        disks: Vec::new(),
        readonly_disks: vec![config_disk],
        vcpus: QEMU_GUEST_VCPUS,
        memory_mib: QEMU_GUEST_MEMORY_MIB,
        ssh_key: key_file,
        ssh_user: base.metadata.ssh_user.clone(),
        timeout: Duration::from_secs(120),
    })
}

async fn one_runner(
    cluster: &LocalCluster,
    client: &mut FleetClient,
    label: &[&str],
) -> anyhow::Result<Timings> {
    let mut labels = vec!["self-hosted".to_string()];
    labels.extend(label.iter().map(|l| l.to_string()));
    let added = client
        .add_instance(pb::AddInstanceRequest {
            runner_name: format!("myshoes-{}", uuid::Uuid::new_v4()),
            setup_script: "true\n".into(),
            resource_type: pb::ResourceType::Nano as i32,
            labels,
        })
        .await?
        .into_inner();
    let runner = client.get_runner(&added.cloud_id).await?;
    let server = runner.timings.context("no timings")?;
    // The agent's own record of the start, while the runner still lives.
    let agent = cluster
        .agents
        .iter()
        .flat_map(|agent| agent.manager.snapshot())
        .find(|status| status.runner_id == runner.runner_id)
        .and_then(|status| status.timings);
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: added.cloud_id,
            labels: Vec::new(),
        })
        .await?;
    Ok(Timings { server, agent })
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    ratio_value(a, b).map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

fn ratio_value(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => Some(a.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    }
}

fn to_json(
    runs: usize,
    wall: Duration,
    cold: &Samples,
    warm: &Samples,
    bare: &[Duration],
    metrics: &str,
) -> serde_json::Value {
    let phases = |s: &Samples| {
        serde_json::json!({
            "clone": p50_p95_json(&s.clone),
            "boot_to_ip": p50_p95_json(&s.boot_to_ip),
            "boot_to_ssh": p50_p95_json(&s.boot_to_ssh),
            "total": p50_p95_json(&s.total),
        })
    };
    let p50 = |samples: &[Duration]| percentile(samples, 50.0);
    // The counter's value from the /metrics text (`name value`), when it was exported.
    let fallbacks = metrics
        .lines()
        .find(|l| l.starts_with("shoesvz_warm_start_fallbacks_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    serde_json::json!({
        "runs": runs,
        "accel": accel::resolve(QemuConfig::default().accel).as_str(),
        "wall_s": wall.as_secs_f64(),
        "cold_ms": phases(cold),
        "warm_ms": phases(warm),
        "bare_ms": p50_p95_json(bare),
        "cold_boot_to_ssh_over_bare_p50": ratio_value(p50(&cold.boot_to_ssh), p50(bare)),
        "cold_total_over_bare_p50": ratio_value(p50(&cold.total), p50(bare)),
        "warm_total_over_cold_total_p50": ratio_value(p50(&warm.total), p50(&cold.total)),
        "warm_start_fallbacks": fallbacks,
    })
}

fn print(
    runs: usize,
    wall: Duration,
    cold: &Samples,
    warm: &Samples,
    bare: &[Duration],
    metrics: &str,
) {
    let accel = accel::resolve(QemuConfig::default().accel).as_str();
    println!(
        "startup: {runs} runs each of cold, warm and bare QEMU (accel {accel}), {:.0} s wall",
        wall.as_secs_f64()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "phase", "cold p50", "cold p95", "warm p50", "warm p95"
    );
    for (name, c, w) in [
        ("clone", &cold.clone, &warm.clone),
        ("prepare (agent)", &cold.prepare, &warm.prepare),
        ("VM start / restore", &cold.vm_start, &warm.vm_start),
        ("refresh (restored)", &cold.refresh, &warm.refresh),
        ("boot-to-IP", &cold.boot_to_ip, &warm.boot_to_ip),
        ("boot-to-SSH", &cold.boot_to_ssh, &warm.boot_to_ssh),
        ("total (to ssh-ready)", &cold.total, &warm.total),
    ] {
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10}",
            name,
            ms(percentile(c, 50.0)),
            ms(percentile(c, 95.0)),
            ms(percentile(w, 50.0)),
            ms(percentile(w, 95.0))
        );
    }
    println!(
        "{:<22} {:>10} {:>10}",
        "bare qemu + ssh loop",
        ms(percentile(bare, 50.0)),
        ms(percentile(bare, 95.0))
    );
    println!(
        "shoes-vz cold boot-to-SSH / bare (p50): {}   (target <= 1.10)",
        ratio(percentile(&cold.boot_to_ssh, 50.0), percentile(bare, 50.0))
    );
    println!(
        "shoes-vz cold total / bare (p50):       {}",
        ratio(percentile(&cold.total, 50.0), percentile(bare, 50.0))
    );
    println!(
        "warm total / cold total (p50):          {}   (target <= 0.25)",
        ratio(percentile(&warm.total, 50.0), percentile(&cold.total, 50.0))
    );
    if let Some(line) = metrics
        .lines()
        .find(|l| l.starts_with("shoesvz_warm_start_fallbacks_total"))
    {
        println!("{line}");
    }
}
