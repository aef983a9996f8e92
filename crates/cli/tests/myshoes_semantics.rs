//! What myshoes v1.20.1 really does to a provider (shared notes: myshoes-behaviour.md), on an
//! in-process cluster with the test backend: retries under the same runner_name, labels
//! `myshoes`/`dependabot` and GitHub's OS/arch labels, bursts larger than the fleet, a
//! DeleteInstance that must not hold the slot, and runners whose job finished.

mod common;

use common::*;
use shoes_vz_protocol::shoes::v1 as pb;
use std::time::{Duration, Instant};
use tonic::Code;

/// A job that registers a runner (writes `.runner` in the template's runner dir, myshoes'
/// `/tmp/runner`, under the test guest's fake root), works for `seconds`, then removes its
/// registration and exits 0, as an ephemeral runner under myshoes' script does.
fn short_job(seconds: f32) -> String {
    format!(
        "d=\"$SHOESVZ_GUEST_ROOT/tmp/runner\"; mkdir -p \"$d\"\n\
         printf '\\357\\273\\277{{\"agentName\":\"x\",\"ephemeral\":true}}' > \"$d/.runner\"\n\
         sleep {seconds}\nrm -f \"$d/.runner\"\n"
    )
}

fn with_labels(name: &str, script: &str, labels: &[&str]) -> pb::AddInstanceRequest {
    let mut request = add_request(name, script);
    request.labels = labels.iter().map(|l| l.to_string()).collect();
    request
}

async fn list_all(client: &mut shoes_vz_cli::fleet_client::FleetClient) -> Vec<pb::RunnerInfo> {
    client.list_runners(true).await.expect("list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_under_the_same_runner_name_attaches_to_the_same_runner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 1, 2);
    opts.boot_delay = Duration::from_secs(1);
    let cluster = start(opts).await;
    let client = cluster.client().await.expect("client");

    let mut first_client = client.clone();
    let first = tokio::spawn(async move {
        first_client
            .add_instance(add_request("myshoes-retried", "true\n"))
            .await
    });
    let mut client = client.clone();
    wait_until_listed(&mut client, 1).await;
    // myshoes' retry (the first call still waits): same name, same job.
    let second = client
        .add_instance(add_request("myshoes-retried", "true\n"))
        .await
        .expect("the retry attaches")
        .into_inner();
    let first = first.await.expect("task").expect("first call").into_inner();
    assert_eq!(first.cloud_id, second.cloud_id, "one runner for both calls");
    assert_eq!(first.ip_address, second.ip_address);
    // After the answer too: the same answer again.
    let third = client
        .add_instance(add_request("myshoes-retried", "true\n"))
        .await
        .expect("a late retry")
        .into_inner();
    assert_eq!(third.cloud_id, first.cloud_id);
    assert_eq!(list_all(&mut client).await.len(), 1);
    assert_eq!(bundles(&cluster.runners_dir(0)), 1, "one VM");
    cluster.shutdown().await;
}

async fn wait_until_listed(client: &mut shoes_vz_cli::fleet_client::FleetClient, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while list_all(client).await.len() < count {
        assert!(
            Instant::now() < deadline,
            "{count} runners never listed: {:?}",
            list_all(client).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_add_survives_a_server_restart_for_its_retry_and_an_unclaimed_one_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 1, 2);
    opts.boot_delay = Duration::from_secs(1);
    opts.claim_grace = Some(Duration::from_secs(3));
    let mut cluster = start(opts).await;
    let mut client = cluster.client().await.expect("client");

    // Two calls are cut mid-add (the plugin process killed, a timeout): neither was answered.
    for (count, name) in [(1, "myshoes-claimed"), (2, "myshoes-abandoned")] {
        let mut cut_client = client.clone();
        let cut =
            tokio::spawn(async move { cut_client.add_instance(add_request(name, "true\n")).await });
        wait_until_listed(&mut client, count).await;
        cut.abort();
    }
    // And the server dies before either call could have been answered.
    drop(client);
    cluster.restart_server().await.expect("server restarts");
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await
        .expect("agent back");
    let mut client = cluster.client().await.expect("client");
    let before = list_all(&mut client).await;
    let claimed_id = before
        .iter()
        .find(|r| r.runner_name == "myshoes-claimed")
        .map(|r| r.cloud_id.clone())
        .expect("the cut runner is known after the restart");

    // myshoes retries the job under the same runner_name: it gets the runner that booted.
    let retry = client
        .add_instance(add_request("myshoes-claimed", "true\n"))
        .await
        .expect("the retry attaches")
        .into_inner();
    assert_eq!(retry.cloud_id, claimed_id);

    // Nobody retries the other one: it is destroyed once the claim grace has passed.
    let abandoned = before
        .iter()
        .find(|r| r.runner_name == "myshoes-abandoned")
        .map(|r| r.cloud_id.clone())
        .expect("abandoned runner known");
    let gone = wait_state(&mut client, &abandoned, "deleted").await;
    assert!(gone.error.is_empty(), "{}", gone.error);
    let claimed = get(&mut client, &claimed_id).await;
    assert_eq!(claimed.state, "running", "the claimed runner stays");
    assert_eq!(
        bundles(&cluster.runners_dir(0)),
        1,
        "only the claimed VM is left"
    );
    let metrics = cluster
        .server
        .fleet
        .metrics()
        .render(&cluster.server.fleet.gauges());
    assert!(
        metrics.contains("shoesvz_runners_unclaimed_total 1"),
        "{metrics}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_labelled_as_myshoes_and_github_label_them_are_placed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(options(dir.path(), 1, 4)).await;
    let mut client = cluster.client().await.expect("client");
    let host_arch = if cfg!(target_arch = "aarch64") {
        "ARM64"
    } else {
        "X64"
    };
    for (name, labels) in [
        ("myshoes-label-myshoes", vec!["myshoes"]),
        ("myshoes-label-dependabot", vec!["dependabot"]),
        (
            "myshoes-label-github",
            vec!["self-hosted", "Linux", host_arch],
        ),
        (
            "myshoes-label-case",
            vec!["SELF-HOSTED", "linux", "MyShoes"],
        ),
    ] {
        client
            .add_instance(with_labels(name, "true\n", &labels))
            .await
            .unwrap_or_else(|status| panic!("{labels:?} refused: {status:?}"));
    }
    let mac = client
        .add_instance(with_labels(
            "myshoes-label-mac",
            "true\n",
            &["self-hosted", "macOS"],
        ))
        .await
        .expect_err("no macOS template here");
    assert_eq!(mac.code(), Code::InvalidArgument);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_larger_than_the_fleet_queues_and_every_short_job_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 1, 2);
    opts.add_instance_timeout = Duration::from_secs(90);
    let cluster = start(opts).await;
    let client = cluster.client().await.expect("client");

    let adds = (0..4).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .add_instance(add_request(&format!("myshoes-burst-{i}"), &short_job(1.0)))
                .await
        }
    });
    let mut cloud_ids = Vec::new();
    for result in futures::future::join_all(adds).await {
        let reply = result.expect("every job is served through the queue");
        cloud_ids.push(reply.into_inner().cloud_id);
    }
    let mut client = client.clone();
    for cloud_id in &cloud_ids {
        let runner = wait_state(&mut client, cloud_id, "deleted").await;
        assert!(
            runner
                .end_reason
                .contains("after the runner was registered"),
            "{runner:?}"
        );
        assert!(runner.error.is_empty(), "{}", runner.error);
    }
    let queued = cloud_ids.len()
        - futures::future::join_all(cloud_ids.iter().map(|id| {
            let mut client = client.clone();
            async move { get(&mut client, id).await.timings.map_or(0, |t| t.queue_ms) }
        }))
        .await
        .iter()
        .filter(|queue_ms| **queue_ms < 500)
        .count();
    assert_eq!(queued, 2, "two calls waited for a slot");
    let metrics = cluster
        .server
        .fleet
        .metrics()
        .render(&cluster.server.fleet.gauges());
    for needle in [
        "shoesvz_queue_wait_seconds_count 4",
        "shoesvz_queue_timeouts_total 0",
        "shoesvz_queue_length 0",
        "shoesvz_runners_finished_total 4",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // myshoes deletes each runner once GitHub no longer lists it: answered OK, once.
    for cloud_id in &cloud_ids {
        client
            .delete_instance(pb::DeleteInstanceRequest {
                cloud_id: cloud_id.clone(),
                labels: vec![],
            })
            .await
            .expect("DeleteInstance of a reclaimed runner");
        let again = client
            .delete_instance(pb::DeleteInstanceRequest {
                cloud_id: cloud_id.clone(),
                labels: vec![],
            })
            .await
            .expect_err("released already");
        assert_eq!(again.code(), Code::NotFound);
    }
    assert_eq!(bundles(&cluster.runners_dir(0)), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_runner_frees_its_slot_at_once_unless_reclaim_is_off() {
    for reclaim in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path(), 1, 1);
        opts.reclaim_finished = reclaim;
        opts.queue_wait = Duration::from_secs(1);
        let cluster = start(opts).await;
        let mut client = cluster.client().await.expect("client");
        let first = client
            .add_instance(add_request("myshoes-finishing", &short_job(0.5)))
            .await
            .expect("add")
            .into_inner()
            .cloud_id;
        let mut next_client = client.clone();
        let second = async move {
            let client = &mut next_client;
            // Retried until the first one's slot is free (or never, without reclaim).
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match client
                    .add_instance(add_request("myshoes-next", "true\n"))
                    .await
                {
                    Ok(reply) => return Some(reply.into_inner().cloud_id),
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        if Instant::now() > deadline {
                            return None;
                        }
                    }
                    Err(status) => panic!("{status:?}"),
                }
            }
        };
        if reclaim {
            assert!(
                second.await.is_some(),
                "the finished runner's slot was freed"
            );
        } else {
            drop(second);
        }
        if reclaim {
            assert_eq!(get(&mut client, &first).await.state, "deleted");
        } else {
            // The job finishes, the runner stays until myshoes deletes it.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(get(&mut client, &first).await.state, "running");
            assert!(
                client
                    .add_instance(add_request("myshoes-next", "true\n"))
                    .await
                    .is_err(),
                "no slot without reclaim"
            );
        }
        client
            .delete_instance(pb::DeleteInstanceRequest {
                cloud_id: first.clone(),
                labels: vec![],
            })
            .await
            .expect("DeleteInstance answers OK either way");
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_instance_answers_before_the_vm_has_stopped_and_the_vm_goes_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(dir.path(), 1, 1);
    // A guest that takes its time to shut down, as a real one does.
    opts.test_stop_delay = Duration::from_secs(3);
    let cluster = start(opts).await;
    let mut client = cluster.client().await.expect("client");
    let cloud_id = client
        .add_instance(add_request("myshoes-deleted", "true\n"))
        .await
        .expect("add")
        .into_inner()
        .cloud_id;
    wait_state(&mut client, &cloud_id, "running").await;
    let asked = Instant::now();
    client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id: cloud_id.clone(),
            labels: vec![],
        })
        .await
        .expect("delete");
    eprintln!("DeleteInstance answered in {:?}", asked.elapsed());
    // The stop takes 3 s: had the call waited for the VM, the runner would be deleted now.
    assert_ne!(get(&mut client, &cloud_id).await.state, "deleted");
    assert_eq!(bundles(&cluster.runners_dir(0)), 1, "the VM is still going");
    wait_state(&mut client, &cloud_id, "deleted").await;
    assert_eq!(bundles(&cluster.runners_dir(0)), 0, "and then it is gone");
    // Repeated (myshoes' retry after a lost answer): NotFound, which myshoes takes as done.
    let again = client
        .delete_instance(pb::DeleteInstanceRequest {
            cloud_id,
            labels: vec![],
        })
        .await
        .expect_err("already deleted");
    assert_eq!(again.code(), Code::NotFound);
    cluster.shutdown().await;
}
