//! A real myshoes job, end to end, under QEMU: myshoes' exact setup script (from
//! `shared/fixtures/myshoes`, only the registration token and the GitHub URL substituted) sent
//! through the go-plugin v1.7.0 client myshoes uses and the real `shoes-vz-plugin` binary, to a
//! local cluster on the `qemu` backend. In the guest the script installs the stand-in actions
//! runner from its cache, registers it (as user `runner`, through sudo) and runs it in the
//! foreground; "GitHub" dispatches one job, longer than the agent's setup timeout, by dropping
//! `_standin/job.json`. The runner must not be killed; the guest's runner state must go idle →
//! running → finished; the slot must be free within 2 s of the finish; the later
//! DeleteInstance must answer OK; nothing may be left on the host.

mod common;

use common::{get, TOKEN};
use russh::keys::{PrivateKey, PublicKey};
use serde_json::Value;
use shoes_vz_agent::bundle::{Bundle, RuntimeMetadata, RUNTIME_METADATA_FILE};
use shoes_vz_agent::config::BackendKind;
use shoes_vz_agent::runner::guest::CONFIG_DISK_FILE;
use shoes_vz_agent::ssh::{self, SshTarget};
use shoes_vz_cli::cluster::{ClusterOptions, LocalCluster};
use shoes_vz_model::RunnerId;
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_standin_runner::myshoes_fixture::{render_setup_script_with, Substitutions};
use shoes_vz_test_support::{go_client, prerequisite_missing_because, shared_dir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The runner name in myshoes' rendered fixture: a retry of this job would use it again.
const RUNNER_NAME: &str = "myshoes-00000000-0000-0000-0000-000000000000";
const REGISTRATION_TOKEN: &str = "AABBCCDDEEFFGGHHIIJJKKLLMMNNO_e2e_REGISTRATION";
const JOB_SECONDS: u64 = 15;
/// Shorter than the job: the job must outlive any setup timeout.
const SETUP_START_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_myshoes_job_runs_to_its_end_and_its_slot_is_reclaimed() {
    let Some(prepared) = prepare().await else {
        return;
    };
    let data = tempfile::Builder::new()
        .prefix("svz-job")
        .tempdir_in("/tmp")
        .expect("data dir");
    std::os::unix::fs::symlink(&prepared.templates, data.path().join("templates"))
        .expect("link the templates");
    let mut options = ClusterOptions::new(data.path(), TOKEN);
    options.backend = BackendKind::Qemu;
    options.max_runners_per_agent = 1;
    options.add_instance_timeout = Duration::from_secs(240);
    options.setup_start_timeout = SETUP_START_TIMEOUT;
    options.guest_status_interval = Duration::from_millis(500);
    let cluster = LocalCluster::start(options).await.expect("qemu cluster");
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await
        .expect("agent online");
    let mut client = cluster.client().await.expect("client");
    let server = cluster.server.grpc_addr.to_string();
    let plugin_env = [
        ("SHOESVZ_SERVER_ADDR", server.as_str()),
        ("SHOESVZ_TOKEN", TOKEN),
    ];

    // AddInstance as myshoes makes it: its runner name, the job's runs-on labels, nano.
    let added = go_one(
        &prepared,
        &plugin_env,
        &[
            "-op",
            "add",
            "-runner-name",
            RUNNER_NAME,
            "-resource-type",
            "1",
            "-labels",
            "self-hosted,Linux,X64",
            "-setup-script",
            &prepared.setup_script,
        ],
    )
    .await;
    assert_eq!(added["code"], "OK", "{added}");
    let cloud_id = added["fields"]["cloud_id"]
        .as_str()
        .expect("cloud_id")
        .to_string();
    let plugin_log = added["plugin_stderr"].as_str().unwrap_or_default();
    assert!(!plugin_log.contains(REGISTRATION_TOKEN), "token logged");

    // The runner registers and listens: idle.
    let mut seen = Vec::new();
    wait_guest_state(
        &mut client,
        &cloud_id,
        "idle",
        &mut seen,
        Duration::from_secs(180),
    )
    .await;
    let runner = get(&mut client, &cloud_id).await;
    assert_eq!(runner.state, "running");
    let runner_id = RunnerId::parse(&runner.runner_id).expect("runner id");
    let bundle = Bundle::path_for(&cluster.runners_dir(0), &runner_id);
    let target = ssh_target(&bundle);
    let session = ssh::wait_ready(&target, Duration::from_secs(60))
        .await
        .expect("SSH into the runner");
    assert_eq!(
        run(
            &session,
            "cat /tmp/runner/.runner | head -c 3 | od -An -tx1"
        )
        .await
        .trim(),
        "ef bb bf",
        "the stand-in registered the way the real runner does (.runner with a BOM)"
    );

    // An operator looks in through the server, as `shoes-vz runners ssh|logs` does: a command
    // over the guest's real sshd, and both logs, the registration token masked everywhere.
    let exec = client
        .operator
        .runner_exec(op::RunnerExecRequest {
            cloud_id: cloud_id.clone(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "test -s /tmp/runner/.runner && echo registered; exit 4".into(),
            ],
            ..Default::default()
        })
        .await
        .expect("runner exec")
        .into_inner();
    assert_eq!(
        (
            exec.exit_status,
            String::from_utf8_lossy(&exec.stdout).trim()
        ),
        (Some(4), "registered")
    );
    let logs = operator_logs(&mut client, &cloud_id).await;
    let setup = String::from_utf8_lossy(&logs[&(op::LogSource::Setup as i32)]).into_owned();
    let console = String::from_utf8_lossy(&logs[&(op::LogSource::Console as i32)]).into_owned();
    assert!(
        setup.contains(&format!("Configuring {RUNNER_NAME} @")),
        "myshoes' script's own output: {setup}"
    );
    assert!(
        console.contains("SHOESVZ_GUEST_IP=") && console.contains("HTTP API listening"),
        "the guest's serial console (its boot announcement and runner-agent): {console}"
    );
    for log in [&setup, &console] {
        assert!(
            !log.contains(REGISTRATION_TOKEN),
            "the token leaked into a log"
        );
    }

    // "GitHub" hands the runner its one job.
    let job = format!(
        "{{\"name\": \"e2e-build\", \"seconds\": {JOB_SECONDS}, \"result\": \"Succeeded\"}}"
    );
    run(
        &session,
        &format!(
            "mkdir -p /tmp/runner/_standin && printf '%s' '{job}' > /tmp/runner/_standin/job.tmp && mv /tmp/runner/_standin/job.tmp /tmp/runner/_standin/job.json && echo dispatched"
        ),
    )
    .await;
    let dispatched = Instant::now();
    wait_guest_state(
        &mut client,
        &cloud_id,
        "running",
        &mut seen,
        Duration::from_secs(60),
    )
    .await;

    // Watch from inside the guest for the ephemeral runner's end (`.runner` removed before the
    // listener exits), and from the server for the slot to be free.
    let mut finished_at = None;
    let mut freed_at = None;
    let deadline = Instant::now() + Duration::from_secs(JOB_SECONDS + 120);
    while freed_at.is_none() {
        assert!(Instant::now() < deadline, "the job never ended: {seen:?}");
        if finished_at.is_none() {
            let probe = session
                .run_script(
                    "sh -s",
                    b"test -e /tmp/runner/.runner && echo registered || echo gone",
                    Duration::from_secs(10),
                    1024,
                )
                .await;
            match probe {
                Ok(output) if String::from_utf8_lossy(&output.stdout).trim() == "gone" => {
                    finished_at = Some(Instant::now());
                }
                Ok(_) => {}
                // The VM went: the runner finished between two probes.
                Err(_) => finished_at = Some(Instant::now()),
            }
        }
        let live: i64 = cluster
            .server
            .fleet
            .gauges()
            .runners_by_state
            .iter()
            .map(|(_, n)| *n)
            .sum();
        if live == 0 {
            freed_at = Some(Instant::now());
        }
        record_state(&mut client, &cloud_id, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    session.close().await;
    let finished_at = finished_at.expect("the finish was seen");
    let freed_at = freed_at.expect("the slot was freed");
    let job_took = finished_at.duration_since(dispatched);
    let finish_to_free = freed_at.saturating_duration_since(finished_at);
    eprintln!("job took {job_took:?} (asked for {JOB_SECONDS} s); slot free {finish_to_free:?} after the finish");
    assert!(
        job_took >= Duration::from_secs(JOB_SECONDS),
        "the job was cut short after {job_took:?}"
    );
    assert!(
        finish_to_free <= Duration::from_secs(2),
        "the slot was free only {finish_to_free:?} after the job finished"
    );

    let ended = get(&mut client, &cloud_id).await;
    record_state(&mut client, &cloud_id, &mut seen).await;
    assert_eq!(ended.state, "deleted");
    assert_eq!(ended.error, "", "the runner was not killed or failed");
    assert_eq!(ended.end_reason, "the runner finished its job");
    assert!(ended.job_started_at_ms > 0 && ended.job_finished_at_ms >= ended.job_started_at_ms);
    let order: Vec<&str> = ["idle", "running", "finished"]
        .into_iter()
        .filter(|state| seen.iter().any(|s| s == state))
        .collect();
    assert_eq!(
        order,
        ["idle", "running", "finished"],
        "guest states seen: {seen:?}"
    );
    let positions: Vec<usize> = order
        .iter()
        .filter_map(|state| seen.iter().position(|s| s == state))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );

    // myshoes deletes the runner once GitHub no longer lists it: OK, not NotFound.
    let deleted = go_one(
        &prepared,
        &plugin_env,
        &["-op", "delete", "-cloud-id", &cloud_id],
    )
    .await;
    assert_eq!(deleted["code"], "OK", "{deleted}");

    // Nothing is left on the host.
    assert!(!bundle.exists(), "{} is left", bundle.display());
    assert_eq!(common::bundles(&cluster.runners_dir(0)), 0);
    assert!(
        qemus_using(&bundle).is_empty(),
        "a QEMU of the runner still runs"
    );
    cluster.shutdown().await;
}

struct Prepared {
    templates: PathBuf,
    plugin: PathBuf,
    go_client: &'static Path,
    setup_script: String,
}

/// The shared test guest (built once), the plugin binary, the Go client and the fixture.
async fn prepare() -> Option<Prepared> {
    let tools = ["qemu-system-x86_64", "apt-get", "dpkg-deb", "mkfs.ext4"];
    if let Some(tool) = tools.into_iter().find(|tool| !on_path(tool)) {
        prerequisite_missing_because(&format!(
            "{tool} is not installed; run .ci/qemu-deps.sh (qemu-system-x86, apt, e2fsprogs)"
        ));
        return None;
    }
    let go_client = match go_client::client() {
        Ok(client) => client,
        Err(reason) => {
            prerequisite_missing_because(reason);
            return None;
        }
    };
    let Some(shared) = shared_dir() else {
        prerequisite_missing_because(
            "the shared/ folder with myshoes' fixtures is not found; put it beside the checkout or set SHOESVZ_SHARED_DIR",
        );
        return None;
    };
    let setup_script = render_setup_script_with(
        &shared,
        &Substitutions {
            token: REGISTRATION_TOKEN.to_string(),
            github_url: Some("https://ghes.shoes-vz.invalid".to_string()),
            runner_name: None,
        },
    )
    .expect("myshoes' setup script fixture");
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
    let built = shoes_vz_cli::qemu_templates::ensure_test_guest(&templates)
        .await
        .expect("the test guest builds");
    eprintln!(
        "test guest {} ({})",
        built.version,
        if built.built { "built" } else { "cached" }
    );
    Some(Prepared {
        templates,
        plugin,
        go_client,
        setup_script,
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file())
    })
}

/// One plugin process through go-plugin, as myshoes runs it for each call.
async fn go_one(prepared: &Prepared, env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut results = go_client::run(prepared.go_client, &prepared.plugin, env, args).await;
    assert_eq!(results.len(), 1);
    results.remove(0)
}

async fn record_state(
    client: &mut shoes_vz_cli::fleet_client::FleetClient,
    cloud_id: &str,
    seen: &mut Vec<String>,
) {
    let state = get(client, cloud_id).await.guest_runner_state;
    if !state.is_empty() && seen.last() != Some(&state) {
        seen.push(state);
    }
}

async fn wait_guest_state(
    client: &mut shoes_vz_cli::fleet_client::FleetClient,
    cloud_id: &str,
    wanted: &str,
    seen: &mut Vec<String>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        record_state(client, cloud_id, seen).await;
        if seen.last().map(String::as_str) == Some(wanted) {
            return;
        }
        let runner = get(client, cloud_id).await;
        assert!(
            Instant::now() < deadline && runner.state != "deleted",
            "guest state {wanted} never came: {seen:?} ({} {:?})",
            runner.state,
            runner.error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SSH into the runner as an operator could: its key and address from the bundle, and only
/// the host key on its config disk.
fn ssh_target(bundle: &Path) -> SshTarget {
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
    SshTarget {
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
    }
}

async fn run(session: &ssh::SshSession, command: &str) -> String {
    let output = session
        .run_script(
            "sh -s",
            command.as_bytes(),
            Duration::from_secs(30),
            64 * 1024,
        )
        .await
        .expect("the command ran");
    assert_eq!(
        output.exit_status,
        Some(0),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Processes whose command line names `bundle`.
fn qemus_using(bundle: &Path) -> Vec<u32> {
    let needle = bundle.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default()
                .contains(&needle)
        })
        .collect()
}

/// Both of the runner's logs (their last 64 KiB) as the operator API streams them, by source.
async fn operator_logs(
    client: &mut shoes_vz_cli::fleet_client::FleetClient,
    cloud_id: &str,
) -> std::collections::HashMap<i32, Vec<u8>> {
    let mut stream = client
        .operator
        .runner_logs(op::RunnerLogsRequest {
            cloud_id: cloud_id.to_string(),
            ..Default::default()
        })
        .await
        .expect("runner logs")
        .into_inner();
    let mut logs = std::collections::HashMap::<i32, Vec<u8>>::new();
    logs.insert(op::LogSource::Setup as i32, Vec::new());
    logs.insert(op::LogSource::Console as i32, Vec::new());
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("the logs stream ends")
        .expect("a log chunk")
    {
        logs.entry(chunk.source).or_default().extend(chunk.data);
    }
    logs
}
