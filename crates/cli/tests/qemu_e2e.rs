//! End to end under QEMU, as myshoes drives it: the real `shoes-vz-plugin` binary (a fresh
//! process per call, go-plugin handshake) against a local cluster on the `qemu` backend with
//! the test guest and its warm template. Each runner is checked from outside: its QEMU
//! process, the setup script's marker read over SSH with the runner's own keys, the guest's
//! runner state, and nothing left after DeleteInstance.
//!
//! Skips loudly without QEMU or apt (`.ci/qemu-deps.sh` installs them in CI). One scenario
//! at a time: two cores emulating several clusters' guests would only slow each down.

mod common;

use common::{get, wait_state, TOKEN};
use russh::keys::{PrivateKey, PublicKey};
use shoes_vz_agent::bundle::{Bundle, RuntimeMetadata, RUNTIME_METADATA_FILE};
use shoes_vz_agent::config::BackendKind;
use shoes_vz_agent::hypervisor::qemu::{process, PID_FILE, QEMU_LOG};
use shoes_vz_agent::runner::guest::CONFIG_DISK_FILE;
use shoes_vz_agent::ssh::{self, SshError, SshTarget};
use shoes_vz_cli::cluster::{ClusterOptions, LocalCluster};
use shoes_vz_cli::fleet_client::FleetClient;
use shoes_vz_cli::plugin_client::PluginHost;
use shoes_vz_guest_image::apt::AptError;
use shoes_vz_guest_image::BuildError;
use shoes_vz_model::RunnerId;
use shoes_vz_plugin::proto::myshoes;
use shoes_vz_protocol::shoes::v1 as pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const COLD_TEMPLATE: &str = "test-guest";
const WARM_TEMPLATE: &str = "test-guest-warm";
const MARKER_FILE: &str = "/home/runner/setup-marker";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_runner_lives_its_whole_life_through_the_plugin() {
    let _one = one_scenario_at_a_time().await;
    let Some(env) = env().await else { return };
    let (_data, cluster) = start_cluster(env, |_| {}).await;
    let host = env.host(&cluster);
    let mut client = cluster.client().await.expect("client");

    let marker = marker();
    let reply = add(&host, "cold", &["self-hosted", "linux"], &marker)
        .await
        .expect("AddInstance through the plugin");
    let live = check_live(&cluster, &mut client, &reply, &marker, COLD_TEMPLATE).await;
    assert!(
        !cmdline(live.pid).contains("-incoming"),
        "a cold runner boots, it does not restore"
    );
    delete_and_check_gone(&host, &cluster, &mut client, live).await;
    stop(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_runner_restores_and_gets_its_own_identity() {
    let _one = one_scenario_at_a_time().await;
    let Some(env) = env().await else { return };
    let (_data, cluster) = start_cluster(env, |options| options.warm = true).await;
    let host = env.host(&cluster);
    let mut client = cluster.client().await.expect("client");

    let marker = marker();
    let reply = add(&host, "warm", &["self-hosted", "warm"], &marker)
        .await
        .expect("AddInstance through the plugin");
    let live = check_live(&cluster, &mut client, &reply, &marker, WARM_TEMPLATE).await;
    // Restored, not a cold boot after a failed restore: the live QEMU was started with
    // `-incoming` (a fallback starts a new one without it and keeps the failed one's log).
    assert!(
        cmdline(live.pid).contains("-incoming"),
        "the warm runner's QEMU was not started from the saved state: {}",
        cmdline(live.pid)
    );
    assert!(
        !live
            .bundle
            .join(Path::new(QEMU_LOG).with_extension("restore.log"))
            .exists(),
        "a restore failed and fell back to a cold boot"
    );
    let metrics = cluster
        .server
        .fleet
        .metrics()
        .render(&cluster.server.fleet.gauges());
    assert!(
        metrics
            .lines()
            .any(|line| line == "shoesvz_warm_start_fallbacks_total 0"),
        "{metrics}"
    );
    // check_live reached the guest pinning the host key on this runner's config disk, so
    // the refresh replaced the warm template's key; any other key is refused.
    let mut wrong = live.ssh.clone();
    wrong.expected_host_key = ssh::generate_ed25519().expect("key").public_key().clone();
    match ssh::wait_ready(&wrong, Duration::from_secs(30)).await {
        Err(SshError::HostKeyMismatch { .. }) => {}
        Err(other) => panic!("expected a host key mismatch, got {other}"),
        Ok(_) => panic!("the guest accepted a host key it was never given"),
    }
    delete_and_check_gone(&host, &cluster, &mut client, live).await;
    stop(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_at_once_each_get_their_own_vm() {
    let _one = one_scenario_at_a_time().await;
    let Some(env) = env().await else { return };
    let (_data, cluster) = start_cluster(env, |options| options.max_runners_per_agent = 2).await;
    let host = env.host(&cluster);
    let mut client = cluster.client().await.expect("client");

    let markers = [marker(), marker()];
    let (first, second) = tokio::join!(
        add(&host, "pair-a", &["self-hosted", "linux"], &markers[0]),
        add(&host, "pair-b", &["self-hosted", "linux"], &markers[1]),
    );
    let replies = [first.expect("first AddInstance"), second.expect("second")];
    assert_ne!(replies[0].cloud_id, replies[1].cloud_id);
    let mut lives = Vec::new();
    for (reply, marker) in replies.iter().zip(&markers) {
        lives.push(check_live(&cluster, &mut client, reply, marker, COLD_TEMPLATE).await);
    }
    assert_ne!(
        lives[0].ssh.addr, lives[1].ssh.addr,
        "distinct SSH forwards"
    );
    assert_ne!(lives[0].pid, lives[1].pid, "one QEMU per runner");
    assert_eq!(running_qemus(&cluster.runners_dir(0)).len(), 2);
    for live in lives {
        delete_and_check_gone(&host, &cluster, &mut client, live).await;
    }
    stop(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_becomes_ready_is_destroyed_at_its_timeout() {
    let _one = one_scenario_at_a_time().await;
    let Some(env) = env().await else { return };
    // Shorter than any QEMU boot, even under KVM.
    let (_data, cluster) = start_cluster(env, |options| {
        options.boot_to_ssh_timeout = Duration::from_millis(200)
    })
    .await;
    let host = env.host(&cluster);
    let mut client = cluster.client().await.expect("client");

    let status = add(&host, "never-ready", &["self-hosted", "linux"], &marker())
        .await
        .expect_err("the guest cannot be ready in time");
    assert_ne!(
        status.code(),
        Code::InvalidArgument,
        "a timeout is worth a retry, myshoes must not drop the job: {status:?}"
    );
    assert!(
        status.message().contains("within"),
        "says what timed out: {}",
        status.message()
    );
    let runners = client.list_runners(true).await.expect("list");
    assert_eq!(runners.len(), 1);
    // A guest that never came up is ended at once (no power-button wait).
    let runner = wait_deleted(&mut client, &runners[0].cloud_id, Duration::from_secs(90)).await;
    assert!(!runner.error.is_empty());
    let runners_dir = cluster.runners_dir(0);
    assert_eq!(common::bundles(&runners_dir), 0, "its bundle is gone");
    assert_eq!(
        running_qemus(&runners_dir),
        Vec::<u32>::new(),
        "its QEMU is gone"
    );
    stop(cluster).await;
}

// ---- environment: tools, binaries, the shared templates ----

struct Env {
    plugin: PathBuf,
    /// Built once, shared by every cluster of this file (each links it as its templates dir).
    templates: PathBuf,
}

impl Env {
    fn host(&self, cluster: &LocalCluster) -> PluginHost {
        PluginHost {
            plugin: self.plugin.clone(),
            server_addr: cluster.server.grpc_addr.to_string(),
            token: TOKEN.to_string(),
        }
    }
}

/// Each test has its own runtime; tokio's Mutex works across them.
async fn one_scenario_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// What every scenario needs, prepared once; `None` (after a loud SKIPPED, in every test)
/// when this machine cannot build or boot the test guest.
async fn env() -> Option<&'static Env> {
    static ENV: tokio::sync::OnceCell<Result<Env, String>> = tokio::sync::OnceCell::const_new();
    match ENV.get_or_init(prepare).await {
        Ok(env) => Some(env),
        Err(reason) => {
            shoes_vz_test_support::prerequisite_missing_because(reason);
            None
        }
    }
}

async fn prepare() -> Result<Env, String> {
    if let Some(reason) = tools_missing() {
        return Err(reason);
    }
    build_workspace_binaries();
    let plugin = shoes_vz_cli::workspace_bin::find_or_build(
        "shoes-vz-plugin",
        "shoes-vz-plugin",
        "SHOESVZ_PLUGIN",
    )
    .expect("the shoes-vz-plugin binary");
    let templates = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("shoes-vz-e2e")
        .join("templates");
    std::fs::create_dir_all(&templates).expect("templates dir");
    let started = Instant::now();
    match shoes_vz_cli::qemu_templates::ensure_test_guest(&templates).await {
        Ok(built) => eprintln!(
            "test guest {} {} in {:?} ({})",
            built.name,
            built.version,
            started.elapsed(),
            if built.built { "built" } else { "cached" }
        ),
        Err(error) if is_apt_failure(&error) => {
            return Err(format!(
                "`apt-get download` is unavailable, so the test guest cannot be built ({error:#}); \
                 run .ci/qemu-deps.sh (apt-get update) with network access"
            ));
        }
        Err(error) => panic!("the test guest does not build: {error:#}"),
    }
    Ok(Env { plugin, templates })
}

fn tools_missing() -> Option<String> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|dir| dir.join(tool).is_file())
        })
    };
    ["qemu-system-x86_64", "apt-get", "dpkg-deb", "mkfs.ext4"]
        .into_iter()
        .find(|tool| !on_path(tool))
        .map(|tool| {
            format!(
                "{tool} is not installed; run .ci/qemu-deps.sh (qemu-system-x86, apt, e2fsprogs)"
            )
        })
}

fn is_apt_failure(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(cause.downcast_ref::<BuildError>(), Some(BuildError::Apt(_)))
            || cause.downcast_ref::<AptError>().is_some()
    })
}

/// The plugin and the guest's runner-agent as this checkout has them (not a stale build):
/// `cargo build` of both, in this test's profile. Cargo holds its lock only while compiling,
/// so this runs fine under `cargo test`. `SHOESVZ_PLUGIN` + `SHOESVZ_RUNNER_AGENT` skip it.
fn build_workspace_binaries() {
    if std::env::var_os("SHOESVZ_PLUGIN").is_some()
        && std::env::var_os("SHOESVZ_RUNNER_AGENT").is_some()
    {
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // target/<profile>/deps/<this test>: build into the same profile, where the lookups
    // (beside this executable first) find it.
    let release = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(2).map(Path::to_path_buf))
        .is_some_and(|profile| profile.ends_with("release"));
    let mut command = std::process::Command::new(cargo);
    command.current_dir(&workspace).args([
        "build",
        "--quiet",
        "-p",
        "shoes-vz-plugin",
        "-p",
        "shoes-vz-runner-agent",
    ]);
    if release {
        command.arg("--release");
    }
    let started = Instant::now();
    let status = command.status().expect("cargo runs");
    assert!(
        status.success(),
        "cargo build of the plugin and runner-agent failed"
    );
    eprintln!(
        "plugin and runner-agent up to date in {:?}",
        started.elapsed()
    );
}

/// A cluster in a fresh data dir whose `templates` links to the shared, prebuilt templates.
async fn start_cluster(
    env: &Env,
    tune: impl FnOnce(&mut ClusterOptions),
) -> (tempfile::TempDir, LocalCluster) {
    // Under /tmp: QMP's socket path (<data>/agents/0/runners/<id>.bundle/qmp.sock) must fit
    // in 107 bytes.
    let data = tempfile::Builder::new()
        .prefix("svz-e2e")
        .tempdir_in("/tmp")
        .expect("data dir");
    std::os::unix::fs::symlink(&env.templates, data.path().join("templates"))
        .expect("link the shared templates");
    let mut options = ClusterOptions::new(data.path(), TOKEN);
    options.backend = BackendKind::Qemu;
    options.agents = 1;
    options.max_runners_per_agent = 1;
    options.add_instance_timeout = Duration::from_secs(120);
    tune(&mut options);
    let started = Instant::now();
    let cluster = LocalCluster::start(options)
        .await
        .expect("the qemu cluster starts");
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await
        .expect("agent online");
    eprintln!("cluster up in {:?}", started.elapsed());
    (data, cluster)
}

async fn stop(cluster: LocalCluster) {
    let started = Instant::now();
    cluster.shutdown().await;
    eprintln!("cluster down in {:?}", started.elapsed());
}

// ---- one runner, seen from outside ----

fn marker() -> String {
    format!("setup-ran-{}", uuid::Uuid::new_v4().simple())
}

async fn add(
    host: &PluginHost,
    name: &str,
    labels: &[&str],
    marker: &str,
) -> Result<myshoes::AddInstanceResponse, tonic::Status> {
    let runner_name = format!(
        "myshoes-e2e-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let started = Instant::now();
    let reply = host
        .add_instance(myshoes::AddInstanceRequest {
            runner_name,
            setup_script: format!("echo \"{marker}\" > {MARKER_FILE}\n"),
            resource_type: myshoes::ResourceType::Nano as i32,
            labels: labels.iter().map(|l| l.to_string()).collect(),
        })
        .await;
    eprintln!(
        "AddInstance {name}: {:?} in {:?}",
        reply.as_ref().map(|r| &r.cloud_id),
        started.elapsed()
    );
    reply
}

struct Live {
    cloud_id: String,
    bundle: PathBuf,
    pid: u32,
    ssh: SshTarget,
}

/// The runner is running in its own QEMU, its setup script ran in the guest, and the guest
/// reports its runner state.
async fn check_live(
    cluster: &LocalCluster,
    client: &mut FleetClient,
    reply: &myshoes::AddInstanceResponse,
    marker: &str,
    template: &str,
) -> Live {
    assert_eq!(reply.shoes_type, "shoes-vz");
    assert!(
        reply.cloud_id.starts_with("shoes-vz-"),
        "{}",
        reply.cloud_id
    );
    assert_eq!(reply.resource_type, myshoes::ResourceType::Nano as i32);
    assert!(
        reply.ip_address.parse::<std::net::IpAddr>().is_ok(),
        "the guest's address: {:?}",
        reply.ip_address
    );
    // AddInstance answers at ssh-ready; the setup script runs right after.
    let runner = wait_state(client, &reply.cloud_id, "running").await;
    assert_eq!(runner.template, template);
    assert_eq!(runner.ip_address, reply.ip_address);
    let timings = runner.timings.unwrap_or_default();
    eprintln!(
        "{} ({template}): clone {} ms, boot→IP {} ms, boot→SSH {} ms, setup {} ms, startup {} ms",
        reply.cloud_id,
        timings.clone_ms,
        timings.boot_to_ip_ms,
        timings.boot_to_ssh_ms,
        timings.setup_ms,
        timings.startup_ms
    );

    let runner_id = RunnerId::parse(&runner.runner_id).expect("runner id");
    let bundle = Bundle::path_for(&cluster.runners_dir(0), &runner_id);
    let pid = process::read_pid_file(&bundle.join(PID_FILE)).expect("QEMU's pidfile");
    assert!(
        cmdline(pid).contains(&bundle.display().to_string()),
        "process {pid} is this runner's QEMU: {}",
        cmdline(pid)
    );

    // SSH in as the operator could: the runner's client key from its bundle, its address
    // from RuntimeMetadata.json, and only the host key on its config disk.
    let metadata: RuntimeMetadata = serde_json::from_slice(
        &std::fs::read(bundle.join(RUNTIME_METADATA_FILE)).expect("RuntimeMetadata.json"),
    )
    .expect("runtime metadata");
    let client_key = PrivateKey::from_openssh(
        std::fs::read_to_string(bundle.join("id_ed25519")).expect("the runner's SSH key"),
    )
    .expect("an OpenSSH private key");
    let config = shoes_vz_guest_config::read_image(&bundle.join(CONFIG_DISK_FILE))
        .expect("the runner's config disk");
    assert_eq!(config.runner_id, runner_id.to_string());
    let target = SshTarget {
        addr: metadata
            .ssh_address
            .as_deref()
            .expect("sshAddress")
            .parse::<SocketAddr>()
            .expect("an address"),
        user: metadata.ssh_user.clone(),
        client_key: Arc::new(client_key),
        expected_host_key: PublicKey::from_openssh(&config.ssh_host_public_key)
            .expect("the host public key"),
    };
    assert_eq!(target.user, "runner");
    let session = ssh::wait_ready(&target, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("cannot SSH into the runner: {e}"));
    let output = session
        .run_script(
            "sh -s",
            format!("cat {MARKER_FILE}").as_bytes(),
            Duration::from_secs(30),
            64 * 1024,
        )
        .await
        .expect("cat ran");
    session.close().await;
    assert_eq!(
        output.exit_status,
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{marker}\n"),
        "the setup script ran in the guest"
    );

    // The guest's runner-agent reports the GitHub runner's state: none is installed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = get(client, &reply.cloud_id).await.guest_runner_state;
        if !state.is_empty() {
            assert_eq!(state, "offline");
            break;
        }
        assert!(Instant::now() < deadline, "no guest runner state reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Live {
        cloud_id: reply.cloud_id.clone(),
        bundle,
        pid,
        ssh: target,
    }
}

async fn delete_and_check_gone(
    host: &PluginHost,
    cluster: &LocalCluster,
    client: &mut FleetClient,
    live: Live,
) {
    let started = Instant::now();
    host.delete_instance(&live.cloud_id)
        .await
        .expect("DeleteInstance through the plugin");
    eprintln!(
        "DeleteInstance {} in {:?}",
        live.cloud_id,
        started.elapsed()
    );
    // DeleteInstance answers once the deletion is recorded; the VM goes right after.
    wait_deleted(client, &live.cloud_id, Duration::from_secs(60)).await;
    assert!(!process_alive(live.pid), "QEMU {} still runs", live.pid);
    assert!(
        !live.bundle.exists(),
        "{} still exists",
        live.bundle.display()
    );
    assert!(
        !running_qemus(&cluster.runners_dir(0))
            .iter()
            .any(|pid| cmdline(*pid).contains(&live.bundle.display().to_string())),
        "a process still uses the deleted runner's bundle"
    );
}

/// Polls (test-side only) until the runner is deleted.
async fn wait_deleted(
    client: &mut FleetClient,
    cloud_id: &str,
    within: Duration,
) -> pb::RunnerInfo {
    let deadline = Instant::now() + within;
    loop {
        let runner = get(client, cloud_id).await;
        if runner.state == "deleted" {
            return runner;
        }
        assert!(
            Instant::now() < deadline,
            "runner {cloud_id} stuck in {} ({:?}) for {within:?}",
            runner.state,
            runner.error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- processes ----

/// The command line of `pid`, arguments joined by spaces ("" once it is gone).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

fn process_alive(pid: u32) -> bool {
    !cmdline(pid).is_empty()
}

/// Processes whose command line names a path under `dir` (a cluster's runners).
fn running_qemus(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline(*pid).contains(&needle))
        .collect()
}
