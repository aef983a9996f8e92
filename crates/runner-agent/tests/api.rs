//! The HTTP API of an in-process runner-agent, over a real loopback socket.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use shoes_vz_runner_agent::identity::{IdentityOptions, DEFAULT_HOST_KEY_PATH};
use shoes_vz_runner_agent::notify::NotifyOptions;
use shoes_vz_runner_agent::{
    AgentOptions, NotifyState, RefreshReport, RefreshRequest, RunningAgent, StatusResponse,
};

struct Running {
    host: TestHost,
    guest: FakeGuest,
    agent: RunningAgent,
    base: String,
    client: reqwest::Client,
}

impl Running {
    async fn start() -> AnyResult<Running> {
        Running::start_with(|_| {}).await
    }

    async fn start_with(before: impl FnOnce(&TestHost)) -> AnyResult<Running> {
        let mut host = TestHost::start().await?;
        let guest = FakeGuest::new(config(&runner_id(1), &host.url(), "Boot")?)?;
        host.register(&guest.config.runner_id, &guest.config.api_token);
        before(&host);
        let agent = RunningAgent::start(AgentOptions {
            config_device: Some(guest.image.clone()),
            identity: IdentityOptions {
                root: guest.root.clone(),
                host_key_paths: vec![PathBuf::from(DEFAULT_HOST_KEY_PATH)],
                dropbear_host_key_paths: Vec::new(),
                host_key_post_cmd: None,
            },
            listen: Some("127.0.0.1:0".parse()?),
            config_wait: Duration::from_secs(5),
            notify: NotifyOptions {
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                ..NotifyOptions::default()
            },
            ..AgentOptions::default()
        })
        .await?;
        let notice = host.next_notify().await?;
        assert_eq!(notice.http_port, agent.local_addr().port());
        let base = format!("http://{}", agent.local_addr());
        Ok(Running {
            host,
            guest,
            agent,
            base,
            client: http(),
        })
    }

    fn token(&self) -> &str {
        self.guest.config.api_token.expose()
    }

    async fn exec(&self, body: Value) -> AnyResult<Value> {
        let response = self
            .client
            .post(format!("{}/exec", self.base))
            .bearer_auth(self.token())
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let value: Value = response.json().await?;
        if !status.is_success() {
            return Err(format!("/exec answered {status}: {value}").into());
        }
        Ok(value)
    }

    async fn status(&self, token: &str) -> AnyResult<(u16, Value)> {
        let response = self
            .client
            .get(format!("{}/status", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }
}

#[tokio::test]
async fn protected_endpoints_refuse_missing_and_wrong_tokens() -> TestResult {
    let r = Running::start().await?;
    let marker = r.guest.dir.path().join("pwned");
    let exec_body = json!({ "argv": ["touch", marker.to_string_lossy()] });
    let wrong = format!("{}x", r.token());
    let headers: [Option<String>; 5] = [
        None,
        Some(format!("Bearer {wrong}")),
        Some(format!("Bearer {}", &r.token()[..63])),
        Some(format!("Basic {}", r.token())),
        Some(format!("bearer{}", r.token())),
    ];
    for (method, path) in [
        ("GET", "/status"),
        ("POST", "/exec"),
        ("POST", "/refresh"),
        ("POST", "/setup"),
        ("POST", "/setup/log"),
    ] {
        for header in &headers {
            let mut request = r
                .client
                .request(method.parse()?, format!("{}{path}", r.base));
            if let Some(value) = header {
                request = request.header("authorization", value);
            }
            if method == "POST" {
                request = request.json(&exec_body);
            }
            let response = request.send().await?;
            assert_eq!(response.status(), 401, "{method} {path} with {header:?}");
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..])
            );
        }
    }
    assert!(!marker.exists(), "a refused /exec ran its command");

    let health = r.client.get(format!("{}/health", r.base)).send().await?;
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await?;
    assert_eq!(health["status"], "ok");
    Ok(())
}

/// Live (not zombie) processes whose process group is `pgid`, from `/proc/*/stat`.
#[cfg(target_os = "linux")]
fn live_group_members(pgid: u32) -> AnyResult<Vec<u32>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may contain anything, so cut at the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            members.push(pid);
        }
    }
    Ok(members)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() -> TestResult {
    let r = Running::start().await?;
    let pgid_file = r.guest.dir.path().join("pgid");
    let script = format!(
        "echo $$ > {0}.tmp && mv {0}.tmp {0}; sleep 300 & sleep 300",
        pgid_file.display()
    );
    let body = json!({ "argv": ["sh", "-c", script], "timeout_secs": 1 });
    let request = tokio::spawn({
        let client = r.client.clone();
        let url = format!("{}/exec", r.base);
        let token = r.token().to_owned();
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?
                .json::<Value>()
                .await
        }
    });

    // While it runs: the shell and both sleeps share one group.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pgid: u32 = loop {
        if let Ok(text) = std::fs::read_to_string(&pgid_file) {
            break text.trim().parse()?;
        }
        assert!(Instant::now() < deadline, "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut seen = 0;
    while Instant::now() < deadline && seen < 3 {
        seen = live_group_members(pgid)?.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen >= 3,
        "expected sh and two sleeps in group {pgid}, saw {seen}"
    );

    let response = request.await??;
    assert_eq!(response["timed_out"], true, "{response}");
    assert_eq!(response["pid"], pgid);
    assert_eq!(response["exit_code"], Value::Null);
    assert_eq!(response["signal"], 9);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let survivors = live_group_members(pgid)?;
        if survivors.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of group {pgid} survived the timeout: {survivors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn exec_output_is_bounded() -> TestResult {
    let r = Running::start().await?;
    let out = r
        .exec(json!({
            "script": "head -c 1000000 /dev/zero | tr '\\0' y\necho done >&2\n",
            "max_output_bytes": 4096,
        }))
        .await?;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert_eq!(out["stdout"].as_str().map(str::len), Some(4096));
    assert_eq!(out["stdout_truncated"], true);
    assert_eq!(out["stderr"], "done\n");
    assert_eq!(out["stderr_truncated"], false);

    let too_much = r
        .client
        .post(format!("{}/exec", r.base))
        .bearer_auth(r.token())
        .json(&json!({ "argv": ["true"], "max_output_bytes": 1u64 << 40 }))
        .send()
        .await?;
    assert_eq!(too_much.status(), 400);
    Ok(())
}

#[tokio::test]
async fn exec_as_the_runner_user_starts_in_its_home() -> TestResult {
    let r = Running::start().await?;
    let out = r
        .exec(
            json!({ "script": "id -u\npwd\necho \"$USER $HOME\"\n", "user": USER, "shell": "sh" }),
        )
        .await?;
    let home = r.guest.path("/home/runner");
    assert_eq!(
        out["stdout"],
        format!(
            "{}\n{}\n{USER} {}\n",
            nix::unistd::geteuid(),
            home.display(),
            home.display()
        )
    );
    let unknown = r
        .client
        .post(format!("{}/exec", r.base))
        .bearer_auth(r.token())
        .json(&json!({ "argv": ["true"], "user": "nobody-here" }))
        .send()
        .await?;
    assert_eq!(unknown.status(), 400);
    Ok(())
}

#[tokio::test]
async fn bad_exec_bodies_are_refused_without_echoing_them() -> TestResult {
    let r = Running::start().await?;
    let secret = "ghs_NotARealTokenButSecretLooking";
    for body in [
        json!({ "script": secret, "argv": ["true"] }),
        json!({ "script": 5, "shell": secret }),
        json!({ "surprise": secret }),
    ] {
        let response = r
            .client
            .post(format!("{}/exec", r.base))
            .bearer_auth(r.token())
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await?;
        assert!(!text.contains(secret), "{text}");
    }
    Ok(())
}

fn copy_fixture(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "processes" || name == "expected-state" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_fixture(&entry.path(), &to.join(&name))?;
        } else {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// A real process named `bin/<name>` inside the runner directory (a copy of `sleep`).
fn fake_runner_process(runner_dir: &Path, name: &str) -> AnyResult<tokio::process::Child> {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or("no sleep binary")?;
    let bin = runner_dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let exe = bin.join(name);
    std::fs::copy(sleep, &exe)?;
    Ok(tokio::process::Command::new(&exe)
        .arg("300")
        .kill_on_drop(true)
        .spawn()?)
}

#[tokio::test]
async fn status_reports_the_state_of_every_fixture() -> TestResult {
    let r = Running::start().await?;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/runner-states");
    let runner_dir = r.guest.path(RUNNER_DIR);
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&fixtures)? {
        let fixture = entry?.path();
        if !fixture.is_dir() {
            continue;
        }
        let expected = std::fs::read_to_string(fixture.join("expected-state"))?;
        let expected = expected.trim();
        let _ = std::fs::remove_dir_all(&runner_dir);
        copy_fixture(&fixture, &runner_dir)?;
        let mut processes = Vec::new();
        for name in std::fs::read_to_string(fixture.join("processes"))?.lines() {
            let exe = match name {
                "listener" => "Runner.Listener",
                "worker" => "Runner.Worker",
                other => return Err(format!("unknown process {other:?} in {fixture:?}").into()),
            };
            processes.push((name.to_owned(), fake_runner_process(&runner_dir, exe)?));
        }

        // A freshly spawned process may not have exec'd yet (its cmdline is still the
        // parent's, or empty): wait until every started process is seen, then check.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (code, status) = loop {
            let (code, status) = r.status(r.token()).await?;
            let all_seen = processes
                .iter()
                .all(|(name, child)| status[format!("{name}_pid")] == json!(child.id()));
            if all_seen || tokio::time::Instant::now() >= deadline {
                break (code, status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(code, 200, "{status}");
        assert_eq!(
            status["state"],
            expected,
            "{}: {status:#}",
            fixture.display()
        );
        assert_eq!(status["problems"], json!([]), "{status:#}");
        let typed: StatusResponse = serde_json::from_value(status.clone())?;
        assert_eq!(typed.runner.state.as_str(), expected);
        for (name, child) in &processes {
            assert_eq!(
                status[format!("{name}_pid")],
                json!(child.id()),
                "{status:#}"
            );
        }
        if status["configured"] == true {
            assert_eq!(
                status["runner"]["agent_name"],
                "shoes-vz-0123456789abcdef0123456789abcdef"
            );
            assert_eq!(status["runner"]["ephemeral"], true);
        }
        // Only the configure run's log exists before the runner is started.
        let newest_log = if expected == "offline" {
            "Runner_20261127-075940-utc.log"
        } else {
            "Runner_20261127-080000-utc.log"
        };
        assert_eq!(status["diag_log"], newest_log);

        for (_, mut child) in processes {
            child.kill().await?;
        }
        checked.push(expected.to_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        ["finished", "idle", "offline", "preparing", "running"]
    );
    Ok(())
}

#[tokio::test]
async fn setup_runs_detached_reports_its_exit_and_keeps_its_log() -> TestResult {
    let r = Running::start().await?;
    let marker = r.guest.dir.path().join("setup-ran");
    // Outlives the request by far: the answer must come back while it still runs.
    let script = format!(
        "echo starting with ghs_SETUPSECRET >/dev/null; echo step-one; sleep 1; touch {}; exit 7",
        marker.display()
    );
    let post = |body: Value| {
        r.client
            .post(format!("{}/setup", r.base))
            .bearer_auth(r.token())
            .json(&body)
            .send()
    };
    let first: Value = post(json!({ "script": script, "shell": "sh" }))
        .await?
        .json()
        .await?;
    assert_eq!(first["started"], true, "{first}");
    assert_eq!(first["status"]["state"], "running", "{first}");
    let (_, status) = r.status(r.token()).await?;
    assert_eq!(status["setup"]["pid"], first["status"]["pid"], "{status:#}");
    // Idempotent: a repeated request (a retry after a lost answer) starts nothing.
    let again: Value = post(json!({ "script": "touch /should-not-run" }))
        .await?
        .json()
        .await?;
    assert_eq!(again["started"], false, "{again}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let (_, status) = r.status(r.token()).await?;
        if status["setup"]["state"] == "exited" || tokio::time::Instant::now() >= deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["setup"]["state"], "exited", "{status:#}");
    assert_eq!(status["setup"]["exit_code"], 7, "{status:#}");
    assert!(marker.exists());
    let log: Value = r
        .client
        .post(format!("{}/setup/log", r.base))
        .bearer_auth(r.token())
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(log["text"], "step-one\n");
    assert_eq!(log["next_offset"], 9);
    let rest: Value = r
        .client
        .post(format!("{}/setup/log", r.base))
        .bearer_auth(r.token())
        .json(&json!({ "offset": 5 }))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(rest["text"], "one\n");

    let bad = post(json!({ "script": "true", "shell": "sh -c" })).await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}

#[tokio::test]
async fn refresh_installs_a_new_identity_and_rotates_the_token() -> TestResult {
    let mut r = Running::start().await?;
    let old_token = r.token().to_owned();
    let authorized = r.guest.path("/home/runner/.ssh/authorized_keys");

    // Inline config, authenticated with the current token.
    let second = config(&runner_id(2), &r.host.url(), "Second")?;
    r.host.register(&second.runner_id, &second.api_token);
    let response = r
        .client
        .post(format!("{}/refresh", r.base))
        .bearer_auth(&old_token)
        .json(&RefreshRequest {
            config: Some(second.clone()),
            config_device: None,
            reply_notice: false,
        })
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await?;
    assert_eq!(report["runner_id"], second.runner_id.as_str());
    assert_eq!(report["install"]["clock"]["clock"], "fake_root");
    let typed: RefreshReport = serde_json::from_value(report)?;
    assert_eq!(typed.install.authorized_keys, authorized);
    assert_eq!(
        std::fs::read_to_string(&authorized)?,
        format!("{}\n", second.ssh_authorized_key)
    );
    assert_eq!(r.host.next_notify().await?.runner_id, second.runner_id);
    assert_eq!(r.status(&old_token).await?.0, 401);
    let (code, status) = r.status(second.api_token.expose()).await?;
    assert_eq!(
        (code, status["runner_id"].clone()),
        (200, json!(second.runner_id))
    );

    // From a new config disk, authenticated with the second token.
    let third = config(&runner_id(3), &r.host.url(), "Third")?;
    r.host.register(&third.runner_id, &third.api_token);
    let image = r.guest.dir.path().join("third.img");
    shoes_vz_guest_config::write_image(&image, &third)?;
    let response = r
        .client
        .post(format!("{}/refresh", r.base))
        .bearer_auth(second.api_token.expose())
        .json(&json!({ "config_device": image }))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(r.host.next_notify().await?.runner_id, third.runner_id);
    assert_eq!(r.status(second.api_token.expose()).await?.0, 401);
    assert_eq!(r.status(third.api_token.expose()).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn a_refresh_can_answer_with_the_signed_notice_instead_of_notifying() -> TestResult {
    let r = Running::start().await?;
    let second = config(&runner_id(4), &r.host.url(), "Fourth")?;
    let response = r
        .client
        .post(format!("{}/refresh", r.base))
        .bearer_auth(r.token())
        .json(&RefreshRequest {
            config: Some(second.clone()),
            config_device: None,
            reply_notice: true,
        })
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let report: RefreshReport = response.json().await?;
    let notice = report.notice.expect("the notice is in the answer");
    // It verifies as a notify from the new identity, and only from it.
    let mut verifier = shoes_vz_guest_config::NotifyVerifier::default();
    verifier.register(&second.runner_id, second.api_token.clone());
    let accepted = verifier.verify(notice.body.as_bytes(), Some(&notice.signature))?;
    assert_eq!(accepted.runner_id, second.runner_id);
    let mut stale = shoes_vz_guest_config::NotifyVerifier::default();
    stale.register(&second.runner_id, r.guest.config.api_token.clone());
    assert!(stale
        .verify(notice.body.as_bytes(), Some(&notice.signature))
        .is_err());
    // Nothing is sent: the runner-agent says so, and the new token is in force.
    let (code, status) = r.status(second.api_token.expose()).await?;
    assert_eq!((code, status["notify"].clone()), (200, json!("replied")));
    assert!(report.took_us > 0);
    Ok(())
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_old_identity() -> TestResult {
    let r = Running::start().await?;
    for body in [
        json!({ "config_device": "/nonexistent/config.img" }),
        json!({ "config_device": "relative.img" }),
        json!({ "config": { "version": 1 } }),
        json!({ "config": { "version": 99 } }),
    ] {
        let response = r
            .client
            .post(format!("{}/refresh", r.base))
            .bearer_auth(r.token())
            .json(&body)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{body}");
    }
    // The user in the new config does not exist: the install fails, the token stays.
    let mut bad_user = config(&runner_id(7), &r.host.url(), "Seven")?;
    bad_user.ssh_user = "ghost".to_owned();
    let response = r
        .client
        .post(format!("{}/refresh", r.base))
        .bearer_auth(r.token())
        .json(&json!({ "config": bad_user }))
        .send()
        .await?;
    assert_eq!(response.status(), 500);
    assert_eq!(r.status(bad_user.api_token.expose()).await?.0, 401);
    let (code, status) = r.status(r.token()).await?;
    assert_eq!(
        (code, status["runner_id"].clone()),
        (200, json!(r.guest.config.runner_id))
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_notify_is_retried_until_the_host_accepts() -> TestResult {
    let r = Running::start_with(|host| host.fail_first(3)).await?;
    let mut state = r.agent.notify_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == NotifyState::Accepted),
    )
    .await??;
    Ok(())
}
