//! `/metrics` over HTTP: each format arrives under its own Content-Type, chosen by `Accept`.

use shoes_vz_server::config::ServerConfig;
use shoes_vz_server::RunningServer;
use std::time::Duration;

async fn start_server(dir: &std::path::Path) -> RunningServer {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        database_url: format!("sqlite://{}/state.db?mode=rwc", dir.display()),
        ..ServerConfig::default()
    };
    config.auth.token = Some("metrics-test-token-0123456789".into());
    RunningServer::start(config).await.expect("server starts")
}

async fn scrape(url: &str, accept: Option<&str>) -> (String, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("scrape answers");
    assert!(response.status().is_success(), "{}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .expect("content-type")
        .to_owned();
    (content_type, response.text().await.expect("body"))
}

#[tokio::test]
async fn scrape_gets_the_format_its_accept_header_asks_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start_server(dir.path()).await;
    let url = format!(
        "http://{}/metrics",
        server.metrics_addr.expect("metrics listening")
    );

    // curl, promtool and scrapers that ask for nothing: Prometheus text 0.0.4.
    let (content_type, body) = scrape(&url, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!body.contains("# EOF"), "{body}");
    assert!(
        body.contains("# TYPE shoesvz_queue_timeouts_total counter"),
        "{body}"
    );

    // Prometheus' default Accept: OpenMetrics, under its own name.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, body) = scrape(&url, Some(prometheus_accept)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE shoesvz_queue_timeouts counter"),
        "{body}"
    );

    server.shutdown().await;
}
