//! shoes-vz-plugin against the real hashicorp/go-plugin client, configured exactly as myshoes
//! configures it, with a real server and agents (test backend) behind it.

mod common;

use common::{assert_plugin_behaved, code, go, go_client, go_one, start_cluster};
use shoes_vz_protocol::shoes::v1 as pb;
use std::collections::HashSet;
use std::time::Duration;

const SECRET: &str = "ghs_SECRETREGISTRATIONTOKEN";

fn add_args<'a>(name: &'a str, resource_type: &'a str, labels: &'a str) -> Vec<&'a str> {
    vec![
        "-op",
        "add",
        "-runner-name",
        name,
        "-resource-type",
        resource_type,
        "-labels",
        labels,
        "-setup-script",
        "#!/bin/sh\necho registering with ghs_SECRETREGISTRATIONTOKEN\n",
    ]
}

async fn runner_state(
    cluster: &shoes_vz_cli::cluster::LocalCluster,
    cloud_id: &str,
) -> pb::RunnerInfo {
    let mut client = cluster.client().await.expect("client");
    client.get_runner(cloud_id).await.expect("get runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_delete_through_go_plugin() {
    let Some(client) = go_client() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_cluster(dir.path(), 1, 2).await;
    let server = cluster.server.grpc_addr.to_string();

    let added = go_one(
        client,
        &server,
        &add_args("myshoes-compat-small", "3", "self-hosted,linux"),
    )
    .await;
    assert_eq!(code(&added), "OK", "{added}");
    let fields = &added["fields"];
    let cloud_id = fields["cloud_id"].as_str().expect("cloud_id").to_string();
    assert!(cloud_id.starts_with("shoes-vz-"), "{cloud_id}");
    assert_eq!(fields["shoes_type"], "shoes-vz");
    assert_eq!(fields["resource_type"], "Small");
    assert!(!fields["ip_address"].as_str().expect("ip").is_empty());
    let plugin_log = added["plugin_stderr"].as_str().expect("stderr");
    assert!(plugin_log.contains(&cloud_id), "{plugin_log}");
    assert!(
        !plugin_log.contains(SECRET),
        "setup script logged: {plugin_log}"
    );
    let runner = runner_state(&cluster, &cloud_id).await;
    assert_eq!(runner.runner_name, "myshoes-compat-small");
    assert_eq!(runner.labels, ["self-hosted", "linux"]);

    // Unknown (0) means "your default": the plugin echoes the type the server served.
    let unknown = go_one(
        client,
        &server,
        &add_args("myshoes-compat-default", "0", "self-hosted"),
    )
    .await;
    assert_eq!(code(&unknown), "OK", "{unknown}");
    assert_eq!(unknown["fields"]["resource_type"], "Medium");

    for result in [&added, &unknown] {
        let id = result["fields"]["cloud_id"].as_str().expect("cloud_id");
        let deleted = go_one(client, &server, &["-op", "delete", "-cloud-id", id]).await;
        assert_eq!(code(&deleted), "OK", "{deleted}");
    }
    assert_eq!(runner_state(&cluster, &cloud_id).await.state, "deleted");

    // Deleting again: already gone, which myshoes takes as final.
    let again = go_one(client, &server, &["-op", "delete", "-cloud-id", &cloud_id]).await;
    assert_eq!(code(&again), "NotFound", "{again}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_unknown_ids_is_not_found() {
    let Some(client) = go_client() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_cluster(dir.path(), 1, 1).await;
    let server = cluster.server.grpc_addr.to_string();
    for id in [
        "shoes-vz-0123456789abcdef0123456789abcdef",
        "i-0123456789abcdef",
    ] {
        let result = go_one(client, &server, &["-op", "delete", "-cloud-id", id]).await;
        assert_eq!(code(&result), "NotFound", "{result}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_can_never_succeed_are_invalid_argument() {
    let Some(client) = go_client() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_cluster(dir.path(), 1, 1).await;
    let server = cluster.server.grpc_addr.to_string();
    // A resource type number outside myshoes' enum: refused by the plugin itself.
    let result = go_one(
        client,
        &server,
        &add_args("myshoes-compat-type", "42", "self-hosted"),
    )
    .await;
    assert_eq!(code(&result), "InvalidArgument", "{result}");
    // Labels no template serves: refused by the server, code passed through.
    let result = go_one(
        client,
        &server,
        &add_args("myshoes-compat-labels", "3", "self-hosted,windows-gpu"),
    )
    .await;
    assert_eq!(code(&result), "InvalidArgument", "{result}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capacity_is_retryable() {
    let Some(client) = go_client() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_cluster(dir.path(), 1, 1).await;
    let server = cluster.server.grpc_addr.to_string();
    let first = go_one(
        client,
        &server,
        &add_args("myshoes-compat-first", "3", "self-hosted"),
    )
    .await;
    assert_eq!(code(&first), "OK", "{first}");
    let second = go_one(
        client,
        &server,
        &add_args("myshoes-compat-second", "3", "self-hosted"),
    )
    .await;
    assert_ne!(code(&second), "OK", "{second}");
    assert_ne!(
        code(&second),
        "InvalidArgument",
        "myshoes would drop the job: {second}"
    );
    assert_eq!(code(&second), "ResourceExhausted", "{second}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    let Some(client) = go_client() else { return };
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let results = go(
        client,
        &format!("127.0.0.1:{port}"),
        &[("SHOESVZ_PLUGIN_ADD_TIMEOUT", "2s")],
        &add_args("myshoes-compat-unreachable", "3", "self-hosted"),
    )
    .await;
    let result = &results[0];
    assert_plugin_behaved(result);
    assert_eq!(code(result), "Unavailable", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_works_and_kill_is_graceful() {
    let Some(client) = go_client() else { return };
    // Ping needs no server: the plugin connects lazily.
    let result = go_one(client, "127.0.0.1:1", &["-op", "ping"]).await;
    assert_eq!(code(&result), "OK", "{result}");
    // go_one asserted Kill() < 2 s, no SIGKILL, exit status 0 and the shutdown log line.
    eprintln!("Kill() took {} ms", result["kill_ms"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_plugin_processes_in_parallel() {
    let Some(client) = go_client() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start_cluster(dir.path(), 2, 4).await;
    let server = cluster.server.grpc_addr.to_string();
    let mut args = add_args("myshoes-compat-par", "1", "self-hosted");
    args.extend(["-parallel", "8"]);
    let results = go(client, &server, &[], &args).await;
    assert_eq!(results.len(), 8);
    let mut cloud_ids = HashSet::new();
    for result in &results {
        assert_plugin_behaved(result);
        assert_eq!(code(result), "OK", "{result}");
        cloud_ids.insert(
            result["fields"]["cloud_id"]
                .as_str()
                .expect("cloud_id")
                .to_string(),
        );
    }
    assert_eq!(cloud_ids.len(), 8, "distinct runners: {cloud_ids:?}");
    let mut deletes = tokio::task::JoinSet::new();
    for cloud_id in cloud_ids {
        let server = server.clone();
        deletes.spawn(async move {
            go_one(client, &server, &["-op", "delete", "-cloud-id", &cloud_id]).await
        });
    }
    while let Some(deleted) = deletes.join_next().await {
        let deleted = deleted.expect("delete task");
        assert_eq!(code(&deleted), "OK", "{deleted}");
    }
    tokio::time::timeout(Duration::from_secs(60), cluster.shutdown())
        .await
        .expect("cluster stops");
}
