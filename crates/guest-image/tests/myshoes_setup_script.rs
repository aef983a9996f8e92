//! myshoes' exact setup script in the QEMU test guest: the fixture wrapper from
//! `shared/fixtures/myshoes/` with only the registration token substituted, run as root
//! through the runner-agent's `/exec`, against the stand-in runner cached in the image. It
//! must install the runner in /tmp/runner, register (`.runner` with a BOM), listen, run the
//! job pre-dropped in the cache, clean up as an ephemeral runner and exit 0; the runner
//! processes run as `runner` in /tmp/runner; the token appears in no runner file and in no
//! output.
//!
//! Needs QEMU, apt and e2fsprogs (`.ci/qemu-deps.sh`), the runner-agent and stand-in
//! binaries (`cargo build -p shoes-vz-runner-agent -p shoes-vz-standin-runner`; CI's
//! `cargo test --workspace` builds them), and the shared fixtures (`SHOESVZ_SHARED_DIR`).
//! Each missing prerequisite skips loudly, or fails when `CI` is set.

mod common;

use common::{backend, one_vm_at_a_time, runner, tools_missing, Guest, BOOT_TIMEOUT};
use shoes_vz_agent::guest_api::{http_client, GuestApi};
use shoes_vz_agent::hypervisor::Hypervisor;
use shoes_vz_agent::ssh;
use shoes_vz_agent::template;
use shoes_vz_guest_image::guest::{runner_cache_dir, RUNNER_DIR};
use shoes_vz_guest_image::{build_test_guest, BuildOptions};
use shoes_vz_runner_agent::{ExecRequest, ExecResponse, RunnerState};
use shoes_vz_standin_runner::myshoes_fixture;
use shoes_vz_standin_runner::record::ProcessRecord;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOB_NAME: &str = "myshoes-e2e";
/// Long enough to look at the configured runner while its job runs.
const JOB_SECONDS: u64 = 6;

/// A missing prerequisite: a loud skip, or a failure under CI. (Inline: this branch has no
/// shared test-support crate.)
fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set, so this test must run)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// A made-up registration token (GitHub's are 29 upper-case letters and digits).
fn fake_token() -> String {
    let mut token = String::from("A");
    while token.len() < 29 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(token.len() as u64);
        token.push_str(&format!("{:X}", hasher.finish()));
    }
    token.truncate(29);
    token
}

async fn exec_root(api: &GuestApi, script: &str, timeout_secs: u64) -> ExecResponse {
    let request = ExecRequest {
        script: Some(script.to_string()),
        shell: Some("bash".into()),
        timeout_secs: Some(timeout_secs),
        ..ExecRequest::default()
    };
    api.exec(&request, Duration::from_secs(timeout_secs))
        .await
        .expect("the runner-agent runs the script")
}

fn checked(what: &str, response: &ExecResponse) -> String {
    assert_eq!(
        response.exit_code,
        Some(0),
        "{what} failed:\n{}\n{}",
        response.stdout,
        response.stderr
    );
    response.stdout.clone()
}

fn assert_in_order(text: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match text[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} missing (or out of order) in:\n{text}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn myshoes_setup_script_runs_a_whole_job_in_the_guest() {
    if let Some(reason) = tools_missing() {
        skip(&reason);
        return;
    }
    let Some(agent_binary) = shoes_vz_guest_image::find_runner_agent() else {
        skip("no shoes-vz-runner-agent binary; `cargo build -p shoes-vz-runner-agent`");
        return;
    };
    let Some(standin_binary) = shoes_vz_guest_image::find_standin_runner() else {
        skip("no shoes-vz-standin-runner binary; `cargo build -p shoes-vz-standin-runner`");
        return;
    };
    let shared = myshoes_fixture::default_shared_dir();
    if !shared.join(myshoes_fixture::WRAPPER).is_file() {
        skip(&format!(
            "no myshoes fixture at {}; set {} to the shared directory",
            shared.join(myshoes_fixture::WRAPPER).display(),
            myshoes_fixture::SHARED_DIR_ENV
        ));
        return;
    }
    let token = fake_token();
    let setup_script =
        myshoes_fixture::render_setup_script(&shared, &token).expect("the fixture renders");

    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shoes-vz-test-guest");
    let options = BuildOptions {
        runner_agent: Some(agent_binary),
        standin_runner: Some(standin_binary),
        cache_dir: root.join("templates").join(".cache").join("debs"),
        ..BuildOptions::new(&root.join("templates-myshoes"))
    };
    let built = tokio::task::spawn_blocking(move || build_test_guest(&options))
        .await
        .expect("join")
        .expect("the myshoes-ready image builds");
    let initrd = built.dir.join(shoes_vz_guest_image::builder::INITRD_FILE);
    eprintln!(
        "myshoes-ready test guest {} ({}): initrd {} bytes",
        built.version,
        if built.built { "built" } else { "cached" },
        std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0)
    );
    let template = template::load(&built.dir).expect("template");
    assert_eq!(
        template
            .metadata
            .guest_agent
            .as_ref()
            .map(|g| g.runner_dir.as_str()),
        Some(RUNNER_DIR)
    );
    let _one = one_vm_at_a_time().await;

    let client_key = Arc::new(ssh::generate_ed25519().expect("key"));
    let host_key = Arc::new(ssh::generate_ed25519().expect("key"));
    let guest = Guest {
        template,
        client_key: Arc::clone(&client_key),
        host_key: Arc::clone(&host_key),
        client_key_file: PathBuf::new(),
    };
    let mut runner = runner(&guest);
    let api_token = shoes_vz_guest_config::ApiToken::generate().expect("token");
    let config = shoes_vz_guest_config::GuestConfig {
        version: shoes_vz_guest_config::FORMAT_VERSION,
        runner_id: runner.id.to_string(),
        api_token: api_token.clone(),
        // Nothing listens there: the guest keeps retrying its notify; /exec does not need it.
        notify_url: "http://10.0.2.2:9/v1/notify".into(),
        ssh_user: "runner".into(),
        ssh_authorized_key: ssh::authorized_key_line(client_key.public_key()),
        ssh_host_key: shoes_vz_guest_config::OpenSshPrivateKey::new(
            host_key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .expect("encode")
                .to_string(),
        )
        .expect("host key"),
        ssh_host_public_key: ssh::authorized_key_line(host_key.public_key()),
        http_listen: shoes_vz_guest_config::default_http_listen(),
        runner_dir: RUNNER_DIR.into(),
        host_time_ms: None,
    };
    let config_disk = runner.bundle.dir.join("config.img");
    shoes_vz_guest_config::write_image(&config_disk, &config).expect("config disk");
    runner.spec.config_disk = Some(config_disk);

    let backend = backend();
    let started = Instant::now();
    backend.start(&runner.spec).await.expect("start");
    let endpoint = backend
        .guest_endpoint(&runner.id, BOOT_TIMEOUT)
        .await
        .expect("address");
    let api = GuestApi::new(
        http_client().expect("client"),
        endpoint
            .http_addr
            .expect("the qemu backend forwards the agent port"),
        api_token,
    );
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while api.status().await.is_err() {
        assert!(Instant::now() < deadline, "the runner-agent never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("boot to runner-agent API {:?}", started.elapsed());

    // The guest is what the script expects, and the job waits in the runner cache (it
    // moves to /tmp/runner with the tree).
    let cache = runner_cache_dir();
    let job =
        format!(r#"{{"name": "{JOB_NAME}", "seconds": {JOB_SECONDS}, "result": "Succeeded"}}"#);
    let prepared = exec_root(
        &api,
        &format!(
            "set -e\n\
             test ! -e /etc/debian_version\n\
             test ! -e /etc/debian_release\n\
             test -f /etc/environment\n\
             test ! -s /etc/environment\n\
             if command -v docker; then exit 1; fi\n\
             for tool in bash which base64 gzip id tar curl jq sudo; do command -v $tool >/dev/null; done\n\
             test \"$(stat -c %u:%a {cache} {cache}/bin/runsvc.sh)\" = \"$(printf '1000:755\\n1000:755')\"\n\
             HOME=/home/runner SHOESVZ_PROBE_ENV=kept sudo -E -u runner sh -c 'echo \"$(id -u) $HOME $SHOESVZ_PROBE_ENV\"'\n\
             mkdir {cache}/_standin\n\
             printf '%s' '{job}' > {cache}/_standin/job.json\n\
             chown -R 1000:1000 {cache}/_standin\n"
        ),
        30,
    )
    .await;
    // sudo -E as root: the runner user, with the caller's environment.
    assert_eq!(
        checked("preparing the guest", &prepared).trim(),
        "1000 /home/runner kept"
    );

    // The exact wrapper, as root, on bash's stdin: it runs the runner in the foreground
    // until the job is done.
    let setup = {
        let api = api.clone();
        tokio::spawn(async move { exec_root(&api, &setup_script, 300).await })
    };

    // While the job runs: the configured runner, as the runner-agent sees it.
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    let running = loop {
        assert!(
            Instant::now() < deadline,
            "the job never ran; states {states:?}"
        );
        assert!(
            !setup.is_finished(),
            "the setup script ended before its job ran"
        );
        if let Ok(status) = api.status().await {
            if states.last() != Some(&status.runner.state) {
                states.push(status.runner.state);
            }
            if status.runner.state == RunnerState::Running && status.runner.listener_pid.is_some() {
                break status;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let listener_pid = running.runner.listener_pid.expect("listener");
    let during = exec_root(
        &api,
        &format!(
            "set -e\n\
             head -c 3 {RUNNER_DIR}/.runner | od -An -tx1\n\
             sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/uid=\\1/p' /proc/{listener_pid}/status\n\
             echo cwd=$(readlink /proc/{listener_pid}/cwd)\n\
             tr '\\0' ' ' < /proc/{listener_pid}/cmdline; echo\n"
        ),
        30,
    )
    .await;
    let during = checked("looking at the running runner", &during);
    assert_in_order(
        &during,
        &[
            " ef bb bf",
            "uid=1000",
            &format!("cwd={RUNNER_DIR}\n"),
            &format!("{RUNNER_DIR}/bin/Runner.Listener run --startuptype service"),
        ],
    );
    let dot_runner = running.runner.runner.as_ref().expect(".runner parsed");
    assert_eq!(dot_runner.ephemeral, Some(true));
    assert_eq!(
        dot_runner.github_url.as_deref(),
        Some("https://github.com/example-org")
    );
    assert_eq!(
        dot_runner.agent_name.as_deref(),
        Some("myshoes-00000000-0000-0000-0000-000000000000")
    );

    let result = setup.await.expect("join");
    let output = format!("{}\n{}", result.stdout, result.stderr);
    eprintln!("--- the setup script's output\n{output}---");
    assert_eq!(
        result.exit_code,
        Some(0),
        "the setup script failed:\n{output}"
    );
    assert!(!result.timed_out);
    eprintln!(
        "myshoes setup script: {} ms in the guest (job {JOB_SECONDS} s); runner states seen {states:?}",
        result.duration_ms
    );
    assert_in_order(
        &result.stdout,
        &[
            "Configuring runner @ example-org",
            "docker is not installed, will be install docker.",
            "runner-v2.336.0 cache is found. skipping download and extract.",
            "Configuring myshoes-00000000-0000-0000-0000-000000000000 @ https://github.com/example-org",
            "--token ***",
            "√ Connected to GitHub",
            "√ Runner successfully added",
            "√ Settings Saved.",
            "apply patch file",
            "Starting Runner listener with startup type: service",
            "Current runner version: '2.336.0'",
            "Z: Listening for Jobs",
            &format!("Z: Running job: {JOB_NAME}"),
            &format!("Z: Job {JOB_NAME} completed with result: Succeeded"),
            "Runner listener exit with 0 return code, stop the service, no retry needed.",
        ],
    );
    assert!(!output.contains("apt-get"), "{output}");
    assert!(!output.contains(&token), "the token leaked into the output");

    // After: the tree, its logs and process records; the token in no runner file.
    let after = exec_root(
        &api,
        &format!(
            "set -e\n\
             cd {RUNNER_DIR}\n\
             for f in .runner .credentials .credentials_rsaparams; do test ! -e $f || {{ echo \"$f left\"; exit 1; }}; done\n\
             test -f .env\n\
             test -f .path\n\
             test ! -e {cache}\n\
             stat -c %u .\n\
             if grep -r -l -F -e \"$SHOESVZ_PROBE\" . ; then echo token found; exit 1; fi\n\
             echo ---diag\n\
             cat _diag/Runner_*.log\n\
             echo ---records\n\
             cat _standin/processes.jsonl\n"
        )
        .replace("$SHOESVZ_PROBE", &token),
        30,
    )
    .await;
    let after = checked("checking the runner tree", &after);
    let (head, rest) = after.split_once("---diag\n").expect("diag section");
    assert_eq!(head.trim(), "1000", "/tmp/runner owned by runner");
    let (diag, records) = rest.split_once("---records\n").expect("records section");
    assert_in_order(
        diag,
        &[
            "INFO Terminal] WRITE LINE: ",
            "Z: Listening for Jobs",
            &format!("Z: Running job: {JOB_NAME}"),
            &format!("Z: Job {JOB_NAME} completed with result: Succeeded"),
        ],
    );
    let records: Vec<ProcessRecord> = records
        .lines()
        .map(|line| serde_json::from_str(line).expect("a process record"))
        .collect();
    let of = |program: &str| -> Vec<&ProcessRecord> {
        records.iter().filter(|r| r.program == program).collect()
    };
    assert_eq!(of("node").len(), 1, "{records:?}");
    assert_eq!(of("Runner.Worker").len(), 1, "{records:?}");
    assert_eq!(
        of("Runner.Listener").len(),
        2,
        "configure and run: {records:?}"
    );
    for record in &records {
        assert_eq!(record.uid, 1000, "{record:?}");
        assert_eq!(record.gid, 1000, "{record:?}");
        let cwd = if record.program == "Runner.Worker" {
            format!("{RUNNER_DIR}/bin")
        } else {
            RUNNER_DIR.to_string()
        };
        assert_eq!(record.cwd, cwd, "{record:?}");
    }
    let configure = of("Runner.Listener")[0];
    assert_eq!(configure.argv[0], "./bin/Runner.Listener");
    assert!(configure.argv.contains(&"***".to_string()), "{configure:?}");

    let status = api.status().await.expect("status");
    assert_eq!(status.runner.state, RunnerState::Finished, "{status:?}");
    assert!(states.contains(&RunnerState::Running), "{states:?}");

    backend
        .stop(&runner.id, Duration::from_secs(20))
        .await
        .expect("stop");
}
