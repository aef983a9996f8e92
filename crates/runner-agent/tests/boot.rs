//! End to end with the real binary: a config disk written by the host-side code, read by
//! the runner-agent under `--root`, keys installed, and a signed notify verified by a test
//! host.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use shoes_vz_guest_config::{sign, ApiToken, NotifyRequest, SIGNATURE_HEADER};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_shoes-vz-runner-agent");

fn agent_command(guest: &FakeGuest) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--root")
        .arg(&guest.root)
        .arg("--config-device")
        .arg(&guest.image)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "shoes_vz_runner_agent=debug,info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn once_installs_the_identity_and_sends_a_verified_notify() -> TestResult {
    let mut host = TestHost::start().await?;
    let guest = FakeGuest::new(config(&runner_id(1), &host.url(), "Client1")?)?;
    host.register(&guest.config.runner_id, &guest.config.api_token);

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        agent_command(&guest)
            .args([
                "--once",
                "--host-key-path",
                "/etc/ssh/ssh_host_ed25519_key",
                "--host-key-path",
                "/etc/dropbear/openssh_ed25519_host_key",
                "--host-key-post-cmd",
                "cp \"$SHOES_VZ_HOST_KEY\" \"$SHOES_VZ_ROOT/etc/converted\" && test -f \"$SHOES_VZ_HOST_PUBLIC_KEY\"",
                "--notify-timeout",
                "30",
            ])
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "runner-agent failed:\n{stderr}");
    // The token and the private key never reach the logs.
    assert!(
        !stderr.contains(guest.config.api_token.expose()),
        "{stderr}"
    );
    assert!(!stderr.contains("b3BlbnNzaC1rZXktdjEA"), "{stderr}");

    let notice = host.next_notify().await?;
    assert_eq!(notice.runner_id, guest.config.runner_id);
    assert_eq!(notice.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(host.refused(), 0);

    let ssh_dir = guest.path("/home/runner/.ssh");
    assert_eq!(mode(&ssh_dir)?, 0o700);
    let authorized = ssh_dir.join("authorized_keys");
    assert_eq!(mode(&authorized)?, 0o600);
    assert_eq!(
        std::fs::read_to_string(&authorized)?,
        format!("{}\n", guest.config.ssh_authorized_key)
    );
    for key in [
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/dropbear/openssh_ed25519_host_key",
    ] {
        let private = guest.path(key);
        assert_eq!(mode(&private)?, 0o600, "{key}");
        assert_eq!(std::fs::read_to_string(&private)?, HOST_KEY_PEM);
        let public = guest.path(&format!("{key}.pub"));
        assert_eq!(mode(&public)?, 0o644, "{key}.pub");
        assert_eq!(
            std::fs::read_to_string(&public)?,
            format!("{}\n", guest.config.ssh_host_public_key)
        );
    }
    // The post command saw the first key's real path.
    assert_eq!(
        std::fs::read_to_string(guest.path("/etc/converted"))?,
        HOST_KEY_PEM
    );
    Ok(())
}

#[tokio::test]
async fn a_garbage_config_disk_stops_the_boot_with_a_clear_error() -> TestResult {
    let host = TestHost::start().await?;
    let guest = FakeGuest::new(config(&runner_id(2), &host.url(), "Client2")?)?;
    std::fs::write(&guest.image, vec![0u8; 1024 * 1024])?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        agent_command(&guest)
            .args(["--once", "--config-wait", "1"])
            .output(),
    )
    .await??;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a shoes-vz config disk"), "{stderr}");
    assert!(!guest.path("/home/runner/.ssh").exists());
    Ok(())
}

/// The daemon: boots, notifies with its real HTTP port, serves the API, stops on SIGTERM.
#[tokio::test]
async fn the_daemon_serves_its_api_after_notifying() -> TestResult {
    let mut host = TestHost::start().await?;
    let guest = FakeGuest::new(config(&runner_id(3), &host.url(), "Client3")?)?;
    host.register(&guest.config.runner_id, &guest.config.api_token);
    // Nobody reads its logs here; a full pipe must not stall it.
    let mut child = agent_command(&guest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;

    let notice = host.next_notify().await?;
    let base = format!("http://127.0.0.1:{}", notice.http_port);
    let client = http();
    let health = client.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status(), 200);

    let unauthorized = client.get(format!("{base}/status")).send().await?;
    assert_eq!(unauthorized.status(), 401);
    let status: serde_json::Value = client
        .get(format!("{base}/status"))
        .bearer_auth(guest.config.api_token.expose())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(status["runner_id"], guest.config.runner_id.as_str());
    assert_eq!(status["state"], "offline");
    assert_eq!(status["notify"], "accepted");

    let exec: serde_json::Value = client
        .post(format!("{base}/exec"))
        .bearer_auth(guest.config.api_token.expose())
        .json(&serde_json::json!({ "argv": ["echo", "hello from the guest"] }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(exec["stdout"], "hello from the guest\n");
    assert_eq!(exec["exit_code"], 0);

    let pid = child.id().ok_or("runner-agent already exited")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(status.success(), "exit after SIGTERM: {status}");
    Ok(())
}

/// The notify endpoint over HTTP refuses a wrong token, another runner's id and a replay.
#[tokio::test]
async fn the_test_host_refuses_forged_and_replayed_notifies_over_http() -> TestResult {
    let mut host = TestHost::start().await?;
    let (a, b) = (runner_id(4), runner_id(5));
    let token_a = ApiToken::generate()?;
    let token_b = ApiToken::generate()?;
    host.register(&a, &token_a);
    host.register(&b, &token_b);
    let client = http();
    let url = host.url();
    let post = |body: Vec<u8>, signature: String| {
        client
            .post(&url)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
    };
    let notice =
        |id: &str| NotifyRequest::new(id.to_owned(), vec!["10.0.2.15".into()], 8080, "t".into());

    let genuine = sign(&notice(&a)?, &token_a)?;
    let response = post(genuine.body.clone(), genuine.signature.clone()).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(host.next_notify().await?.runner_id, a);

    let replay = post(genuine.body, genuine.signature).await?;
    assert_eq!(replay.status(), 401);
    assert!(replay.text().await?.contains("replay"));

    let wrong_token = sign(&notice(&a)?, &ApiToken::generate()?)?;
    assert_eq!(
        post(wrong_token.body, wrong_token.signature)
            .await?
            .status(),
        401
    );

    let impostor = sign(&notice(&b)?, &token_a)?;
    assert_eq!(post(impostor.body, impostor.signature).await?.status(), 401);

    assert_eq!(host.refused(), 3);
    assert!(host.try_next_notify().is_none());
    Ok(())
}
