//! The plugin process on its own, as go-plugin sees it: the cookie, configuration errors before
//! the handshake, exactly one line on stdout, health, SIGINT ignored, Shutdown exits.

mod common;

use common::{assert_hclog_lines, COOKIE_KEY, COOKIE_VALUE, PLUGIN};
use shoes_vz_plugin::proto::plugin::grpc_controller_client::GrpcControllerClient;
use shoes_vz_plugin::proto::plugin::Empty;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn plugin_command() -> Command {
    let mut command = Command::new(PLUGIN);
    command
        .env_remove(COOKIE_KEY)
        .env_remove("PLUGIN_CLIENT_CERT")
        .env_remove("PLUGIN_PROTOCOL_VERSIONS")
        .env_remove("SHOESVZ_SERVER_ADDR")
        .env_remove("SHOESVZ_TOKEN")
        .env_remove("SHOESVZ_TLS_CA")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

fn hosted(command: &mut Command) -> &mut Command {
    command
        .env(COOKIE_KEY, COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("SHOESVZ_SERVER_ADDR", "127.0.0.1:1")
        .env("SHOESVZ_TOKEN", common::TOKEN)
}

#[test]
fn without_the_cookie_it_explains_and_exits_1() {
    for cookie in [None, Some("wrong")] {
        let mut command = plugin_command();
        if let Some(cookie) = cookie {
            command.env(COOKIE_KEY, cookie);
        }
        let output = command.output().expect("run the plugin");
        assert_eq!(output.status.code(), Some(1));
        assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("myshoes") && stderr.contains(COOKIE_KEY),
            "{stderr}"
        );
    }
}

#[test]
fn bad_configuration_fails_before_the_handshake() {
    let cases: [(&str, &str, &str); 5] = [
        ("SHOESVZ_SERVER_ADDR", "", "SHOESVZ_SERVER_ADDR"),
        ("SHOESVZ_TOKEN", "", "SHOESVZ_TOKEN"),
        (
            "SHOESVZ_PLUGIN_ADD_TIMEOUT",
            "soon",
            "SHOESVZ_PLUGIN_ADD_TIMEOUT",
        ),
        (
            "PLUGIN_CLIENT_CERT",
            "-----BEGIN CERTIFICATE-----",
            "AutoMTLS",
        ),
        ("PLUGIN_PROTOCOL_VERSIONS", "2", "protocol version"),
    ];
    for (key, value, expected) in cases {
        let mut command = plugin_command();
        hosted(&mut command).env(key, value);
        let output = command.output().expect("run the plugin");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{key}={value:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{key}: no handshake expected");
        assert!(stderr.contains(expected), "{key}: {stderr}");
        assert!(stderr.contains("\"@level\":\"error\""), "{key}: {stderr}");
        assert_hclog_lines(&stderr);
        assert!(!stderr.contains(common::TOKEN), "token leaked: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stdout_line_health_sigint_ignored_and_shutdown_exits() {
    let mut command = tokio::process::Command::from({
        let mut command = plugin_command();
        hosted(&mut command).env("RUST_LOG", "shoes_vz_plugin=debug");
        command
    });
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the plugin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (stderr_tx, mut stderr_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let stderr_task = tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = stderr_tx.send(line);
        }
    });

    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
        .await
        .expect("handshake within 30 s")
        .expect("read stdout");
    let fields: Vec<&str> = line.trim_end_matches('\n').split('|').collect();
    assert!(line.ends_with('\n'), "{line:?}");
    assert_eq!(fields.len(), 5, "{line:?}");
    assert_eq!(&fields[..3], ["1", "1", "tcp"], "{line:?}");
    assert_eq!(fields[4], "grpc", "{line:?}");
    let addr: std::net::SocketAddr = fields[3].parse().expect("an address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the plugin");
    let mut health = HealthClient::new(channel.clone());
    let check = || HealthCheckRequest {
        service: "plugin".into(),
    };
    let status = health.check(check()).await.expect("health").into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    // SIGINT: logged (at debug) and ignored.
    let pid = child.id().expect("pid").to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr_rx.recv().await {
            let ignored = line.contains("SIGINT ignored");
            seen.push(line);
            if ignored {
                return;
            }
        }
    })
    .await
    .expect("the plugin logs the ignored SIGINT");
    assert!(child.try_wait().expect("wait").is_none(), "SIGINT ended it");
    let status = health.check(check()).await.expect("health").into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    // Shutdown answers, then the process exits by itself with status 0.
    GrpcControllerClient::new(channel)
        .shutdown(Empty {})
        .await
        .expect("Shutdown answered");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the plugin exits after Shutdown")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");

    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.expect("read stdout");
    assert_eq!(rest, "", "nothing but the handshake on stdout");
    stderr_task.await.expect("stderr reader");
    while let Some(line) = stderr_rx.recv().await {
        seen.push(line);
    }
    let log = seen.join("\n");
    assert_hclog_lines(&log);
    assert!(
        log.contains(shoes_vz_plugin::controller::EXIT_MESSAGE),
        "{log}"
    );
}
