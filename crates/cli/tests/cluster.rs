//! In-process cluster tests: a real server (SQLite in a temp dir), real agents with the test
//! backend (real SSH servers), and a real gRPC client, as myshoes' plugin would use.

mod common;

use common::*;
use shoes_vz_protocol::shoes::v1 as pb;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_fill_exactly_the_capacity_then_delete_frees_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let markers = dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let mut opts = options(&dir.path().join("cluster"), 2, 2);
    // The runners never finish (their scripts start no GitHub runner): the calls beyond the
    // capacity queue, then give up.
    opts.queue_wait = Duration::from_secs(1);
    let cluster = start(opts).await;
    let client = cluster.client().await.expect("client");

    let requests = (0..7).map(|i| {
        let mut client = client.clone();
        let script = format!(
            "echo \"secret-token-{i} ran as $USER\" > {}/runner-{i}\n",
            markers.display()
        );
        async move {
            let reply = client
                .add_instance(add_request(&format!("myshoes-runner-{i}"), &script))
                .await;
            (i, reply)
        }
    });
    let results = futures::future::join_all(requests).await;
    let mut created = Vec::new();
    let mut exhausted = 0;
    for (i, result) in results {
        match result {
            Ok(reply) => {
                let reply = reply.into_inner();
                assert_eq!(reply.shoes_type, "shoes-vz");
                assert!(reply.cloud_id.starts_with("shoes-vz-"));
                // The test guest's runner-agent runs on the host, so it notifies a host address.
                assert!(
                    reply.ip_address.parse::<std::net::IpAddr>().is_ok(),
                    "{}",
                    reply.ip_address
                );
                assert_eq!(reply.resource_type, pb::ResourceType::Small as i32);
                created.push((i, reply.cloud_id));
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                exhausted += 1;
            }
        }
    }
    assert_eq!(created.len(), 4, "exactly the total capacity succeeds");
    assert_eq!(exhausted, 3);

    let mut client = client.clone();
    for (i, cloud_id) in &created {
        let runner = wait_state(&mut client, cloud_id, "running").await;
        let timings = runner.timings.expect("timings");
        assert!(timings.clone_ms > 0 && timings.boot_to_ssh_ms >= timings.boot_to_ip_ms);
        assert!(timings.startup_ms > 0 && timings.setup_ms > 0);
        let marker =
            std::fs::read_to_string(markers.join(format!("runner-{i}"))).expect("setup script ran");
        assert!(
            marker.starts_with(&format!("secret-token-{i} ran as ")),
            "{marker}"
        );
        // The guest's runner-agent reports the GitHub runner's state (none installed: offline).
        let mut guest_state = String::new();
        for _ in 0..500 {
            guest_state = get(&mut client, cloud_id).await.guest_runner_state;
            if !guest_state.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(guest_state, "offline");
    }
    let live: usize = (0..2).map(|a| bundles(&cluster.runners_dir(a))).sum();
    assert_eq!(live, 4, "one bundle per runner");

    let metrics = cluster
        .server
        .fleet
        .metrics()
        .render(&cluster.server.fleet.gauges());
    assert!(
        metrics.contains("shoesvz_runners_total{state=\"running\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("shoesvz_capacity_total_runners 4"));
    assert!(metrics
        .contains("shoesvz_requests_total{method=\"AddInstance\",code=\"ResourceExhausted\"} 3"));
    assert!(
        metrics.contains("shoesvz_queue_timeouts_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("shoesvz_runner_phase_duration_seconds_count{phase=\"setup\"} 4"));

    for (_, cloud_id) in &created {
        client
            .delete_instance(pb::DeleteInstanceRequest {
                cloud_id: cloud_id.clone(),
                labels: vec![],
            })
            .await
            .expect("delete");
        wait_state(&mut client, cloud_id, "deleted").await;
    }
    for agent in 0..2 {
        assert_eq!(bundles(&cluster.runners_dir(agent)), 0, "bundles removed");
    }
    let again = client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: created[0].1.clone(),
            labels: vec![],
        })
        .await
        .expect_err("second delete");
    assert_eq!(again.code(), Code::NotFound);

    // Slots are free again: the full capacity can be used once more.
    let refill = (0..4).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .add_instance(add_request(&format!("myshoes-again-{i}"), "true\n"))
                .await
        }
    });
    for result in futures::future::join_all(refill).await {
        result.expect("capacity was freed");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_can_never_succeed_are_invalid_argument_and_auth_is_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 1)).await;
    let mut client = cluster.client().await.expect("client");

    let bad_name = client
        .add_instance(add_request("../etc/passwd", "true"))
        .await
        .expect_err("bad name");
    assert_eq!(bad_name.code(), Code::InvalidArgument);

    let mut unmappable = add_request("myshoes-unmappable", "true");
    unmappable.resource_type = 42;
    let status = client
        .add_instance(unmappable)
        .await
        .expect_err("bad resource type");
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut windows = add_request("myshoes-windows", "true");
    windows.labels = vec!["self-hosted".into(), "windows".into()];
    let status = client
        .add_instance(windows)
        .await
        .expect_err("no template serves windows");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("windows"));

    let never_issued = client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: "shoes-vz-0123456789abcdef0123456789abcdef".into(),
            labels: vec![],
        })
        .await
        .expect_err("unknown id");
    assert_eq!(never_issued.code(), Code::NotFound);

    let no_token = shoes_vz_protocol::client::connect_shoes(
        &cluster.server.grpc_addr.to_string(),
        "wrong-token-0123456789",
        &Default::default(),
    )
    .await
    .expect("connect")
    .delete_instance(pb::DeleteInstanceRequest {
        cloud_id: "shoes-vz-0123456789abcdef0123456789abcdef".into(),
        labels: vec![],
    })
    .await
    .expect_err("wrong token");
    assert_eq!(no_token.code(), Code::Unauthenticated);

    // The setup script (with its token) never shows up in an error or a runner record.
    let mut failing = add_request("myshoes-failing-setup", "echo ghp_SECRETTOKEN; exit 3\n");
    failing.labels = vec![];
    let reply = client
        .add_instance(failing)
        .await
        .expect("ssh-ready before setup runs")
        .into_inner();
    let runner = wait_state(&mut client, &reply.cloud_id, "deleted").await;
    assert!(
        runner
            .error
            .contains("setup script exited (status 3) before the GitHub runner was registered"),
        "{}",
        runner.error
    );
    assert!(!runner.error.contains("SECRETTOKEN"));
    let metrics = cluster
        .server
        .fleet
        .metrics()
        .render(&cluster.server.fleet.gauges());
    assert!(
        metrics.contains("shoesvz_runner_failures_total{reason=\"setup\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        bundles(&cluster.runners_dir(0)),
        0,
        "failed runner destroyed"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_becomes_ready_is_destroyed_at_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 1, 1);
    opts.never_ready = true;
    opts.boot_to_ssh_timeout = Duration::from_secs(1);
    let cluster = start(opts).await;
    let mut client = cluster.client().await.expect("client");
    let status = client
        .add_instance(add_request("myshoes-never-ready", "true"))
        .await
        .expect_err("never ready");
    // Retryable: a retry gets a new VM.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("did not get an address"),
        "{}",
        status.message()
    );
    let runners = client.list_runners(true).await.expect("list");
    assert_eq!(runners.len(), 1);
    let runner = wait_state(&mut client, &runners[0].cloud_id, "deleted").await;
    assert!(!runner.error.is_empty());
    assert_eq!(bundles(&cluster.runners_dir(0)), 0);
    // Its slot is free again.
    assert_eq!(
        cluster
            .server
            .fleet
            .gauges()
            .runners_by_state
            .iter()
            .map(|(_, n)| n)
            .sum::<i64>(),
        0
    );
    cluster.shutdown().await;
}
