//! TLS on the gRPC links: a server with a certificate, an agent and a client that trust it
//! through a CA file, and a plaintext client that cannot talk to it.

use shoes_vz_agent::config::{AgentConfig, CloneMode};
use shoes_vz_agent::{template, RunningAgent};
use shoes_vz_protocol::client::{connect_operator, ConnectOptions};
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_server::config::{ServerConfig, TlsConfig};
use shoes_vz_server::RunningServer;
use std::time::Duration;

const TOKEN: &str = "tls-test-token-0123456789";
const OPERATOR_TOKEN: &str = "tls-test-operator-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_agent_and_client_speak_tls_with_a_trusted_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert_pem = cert.cert.pem();
    let (cert_path, key_path) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    std::fs::write(&cert_path, &cert_pem).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");

    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: None,
        database_url: format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("state.db").display()
        ),
        tls: Some(TlsConfig {
            cert: cert_path.clone(),
            key: key_path,
        }),
        ..ServerConfig::default()
    };
    config.auth.token = Some(TOKEN.to_string());
    config.auth.operator_token = Some(OPERATOR_TOKEN.to_string());
    let mut server = RunningServer::start(config)
        .await
        .expect("TLS server starts");
    let port = server.grpc_addr.port();

    let templates = dir.path().join("templates");
    template::ensure_test_template(&templates, "test-default").expect("template");
    let agent_config = AgentConfig {
        server_url: format!("https://localhost:{port}"),
        token: Some(TOKEN.to_string()),
        tls_ca: Some(cert_path.clone()),
        data_dir: dir.path().join("agent"),
        templates_dir: templates,
        runners_dir: dir.path().join("agent/runners"),
        clone_mode: CloneMode::Copy,
        ..AgentConfig::default()
    };
    let agent = RunningAgent::start(agent_config)
        .await
        .expect("agent starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.fleet.gauges().agents_online < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never came online over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let trusted = ConnectOptions {
        tls_ca_pem: Some(cert_pem.into_bytes()),
        connect_timeout: Some(Duration::from_secs(5)),
    };
    let mut client = connect_operator(
        &format!("https://localhost:{port}"),
        OPERATOR_TOKEN,
        &trusted,
    )
    .await
    .expect("TLS client connects");
    client
        .list_runners(op::ListRunnersRequest::default())
        .await
        .expect("authenticated call over TLS");

    let plaintext = connect_operator(
        &format!("http://localhost:{port}"),
        OPERATOR_TOKEN,
        &ConnectOptions::default(),
    )
    .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(mut client) => client
            .list_runners(op::ListRunnersRequest::default())
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a plaintext client must not get through to a TLS server"
    );

    agent.shutdown(Duration::from_secs(10)).await;
    server.shutdown().await;
}
