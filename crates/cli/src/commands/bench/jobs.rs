//! `shoes-vz bench jobs`: N jobs as myshoes runs them, through the plugin (a fresh process per
//! call), on the test backend with the stand-in GitHub Actions runner, once with finished
//! runners reclaimed at once and once without, side by side.
//!
//! What plays myshoes (shared notes: myshoes-behaviour.md): every job's AddInstance is sent
//! at once; a refused call is retried under the same runner_name after 2^n s (+ up to 1 s);
//! once a minute (`--delete-interval`) the runners whose job finished are deleted one at a
//! time. Each runner's setup script installs the stand-in runner, registers it and runs it in
//! the foreground, as myshoes' script does; the runner takes one job of `--job-seconds`.

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::human;
use crate::output::{print_json, Output};
use crate::plugin_client::PluginHost;
use crate::stats::{p50_p95_json, percentile};
use anyhow::Context;
use shoes_vz_plugin::proto::myshoes;
use shoes_vz_protocol::shoes::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// Jobs to run.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// How long each job runs once its runner has it.
    #[arg(long, default_value_t = 5)]
    job_seconds: u64,
    /// Runner slots (one agent).
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// How often the myshoes stand-in deletes runners whose job finished (myshoes: 1 minute).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    delete_interval: Duration,
}

const TOKEN: &str = "bench-token-0123456789";

/// One mode's results.
struct Outcome {
    wall: Duration,
    jobs: usize,
    add_calls: usize,
    queue_wait: Vec<Duration>,
    /// From the job's finish (as the agent saw it) to its slot being free.
    slot_idle: Vec<Duration>,
}

pub async fn run(args: JobsArgs, output: Output) -> anyhow::Result<()> {
    let plugin = crate::workspace_bin::find_or_build(
        "shoes-vz-plugin",
        "shoes-vz-plugin",
        "SHOESVZ_PLUGIN",
    )?;
    let standin = crate::workspace_bin::find_or_build(
        "shoes-vz-standin-runner",
        "shoes-vz-standin-runner",
        "SHOESVZ_STANDIN_RUNNER",
    )?;
    human!(
        output,
        "jobs: {} jobs of {} s on {} slots (test backend, stand-in runner), through the plugin; myshoes deletes every {:?}",
        args.jobs, args.job_seconds, args.slots, args.delete_interval
    );
    let mut results = Vec::new();
    for reclaim in [true, false] {
        let outcome = run_mode(&args, &plugin, &standin, reclaim)
            .await
            .with_context(|| format!("the run with reclaim_finished = {reclaim} failed"))?;
        results.push((reclaim, outcome));
    }
    if output.is_json() {
        return print_json(&to_json(&args, &results));
    }
    println!(
        "{:<22} {:>8} {:>10} {:>12} {:>10} {:>10} {:>12} {:>12}",
        "reclaim_finished",
        "jobs",
        "wall s",
        "jobs/min",
        "adds/job",
        "queue p50",
        "queue p95",
        "idle p50/p95"
    );
    for (reclaim, o) in &results {
        let secs = o.wall.as_secs_f64();
        println!(
            "{:<22} {:>8} {:>10.1} {:>12.2} {:>10.2} {:>10} {:>12} {:>12}",
            reclaim,
            o.jobs,
            secs,
            o.jobs as f64 * 60.0 / secs.max(f64::EPSILON),
            o.add_calls as f64 / o.jobs.max(1) as f64,
            seconds(percentile(&o.queue_wait, 50.0)),
            seconds(percentile(&o.queue_wait, 95.0)),
            format!(
                "{}/{}",
                seconds(percentile(&o.slot_idle, 50.0)),
                seconds(percentile(&o.slot_idle, 95.0))
            ),
        );
    }
    println!("wall: until the last job's slot was free; queue: how long a placed AddInstance waited for a slot (the server's queue_ms); idle: from a job's finish, as the agent saw it, to its slot being free");
    Ok(())
}

fn to_json(args: &JobsArgs, results: &[(bool, Outcome)]) -> serde_json::Value {
    let modes: Vec<serde_json::Value> = results
        .iter()
        .map(|(reclaim, o)| {
            let secs = o.wall.as_secs_f64();
            serde_json::json!({
                "reclaim_finished": reclaim,
                "jobs": o.jobs,
                "wall_s": secs,
                "jobs_per_min": o.jobs as f64 * 60.0 / secs.max(f64::EPSILON),
                "adds_per_job": o.add_calls as f64 / o.jobs.max(1) as f64,
                "queue_wait_ms": p50_p95_json(&o.queue_wait),
                "slot_idle_ms": p50_p95_json(&o.slot_idle),
            })
        })
        .collect();
    serde_json::json!({
        "jobs": args.jobs,
        "job_seconds": args.job_seconds,
        "slots": args.slots,
        "delete_interval_s": args.delete_interval.as_secs_f64(),
        "modes": modes,
    })
}

fn seconds(value: Option<Duration>) -> String {
    value.map_or_else(|| "-".into(), |d| format!("{:.2}s", d.as_secs_f64()))
}

async fn run_mode(
    args: &JobsArgs,
    plugin: &Path,
    standin: &Path,
    reclaim: bool,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let mut options = ClusterOptions::new(dir.path(), TOKEN);
    options.max_runners_per_agent = args.slots.max(1);
    options.boot_delay = Duration::from_millis(300);
    options.metrics_listen = None;
    options.reclaim_finished = reclaim;
    let cluster = LocalCluster::start(options).await?;
    cluster
        .wait_agents_online(1, Duration::from_secs(30))
        .await?;
    let host = PluginHost {
        plugin: plugin.to_path_buf(),
        server_addr: cluster.server.grpc_addr.to_string(),
        token: TOKEN.to_string(),
    };
    let started_ms = shoes_vz_model::clock::now_ms();
    let adds = (0..args.jobs).map(|i| {
        let host = host.clone();
        let script = setup_script(standin, &format!("myshoes-bench-{i}"), args.job_seconds);
        async move { add_with_retries(&host, &format!("myshoes-bench-{i}"), &script).await }
    });
    let deleter = delete_finished_runners(&cluster, &host, args.delete_interval, args.jobs);
    let watcher = watch_slots_freed(&cluster, args.jobs);
    let (added, deleted, freed) = tokio::join!(futures::future::join_all(adds), deleter, watcher);
    let freed = freed?;
    let mut cloud_ids = Vec::new();
    let mut add_calls = 0;
    for result in added {
        let (cloud_id, calls) = result?;
        cloud_ids.push(cloud_id);
        add_calls += calls;
    }
    deleted?;
    // Until the last job's slot was free: myshoes' later cleanup is not the jobs' time.
    let last_freed = freed.values().copied().max().unwrap_or(started_ms);
    let wall = Duration::from_millis(u64::try_from(last_freed - started_ms).unwrap_or(0));

    let mut client = cluster.client().await?;
    let mut queue_wait = Vec::new();
    let mut slot_idle = Vec::new();
    for cloud_id in &cloud_ids {
        let runner = get(&mut client, cloud_id).await?;
        let timings = runner.timings.unwrap_or_default();
        queue_wait.push(Duration::from_millis(timings.queue_ms));
        if let Some(freed_at) = freed
            .get(cloud_id)
            .filter(|_| runner.job_finished_at_ms > 0)
        {
            let idle = freed_at.saturating_sub(runner.job_finished_at_ms);
            slot_idle.push(Duration::from_millis(u64::try_from(idle).unwrap_or(0)));
        }
    }
    cluster.shutdown().await;
    Ok(Outcome {
        wall,
        jobs: args.jobs,
        add_calls,
        queue_wait,
        slot_idle,
    })
}

/// A myshoes-shaped setup script for the test backend: install the runner (the stand-in's
/// tree, from its binary), register it ephemeral with myshoes' labels, run it in the
/// foreground. On the test backend everything runs on the host, under the runner's fake root.
fn setup_script(standin: &Path, name: &str, job_seconds: u64) -> String {
    format!(
        r#"set -e
d="$SHOESVZ_GUEST_ROOT/tmp/runner"
'{standin}' layout "$d" --link symlink
cd "$d"
RUNNER_ALLOW_RUNASROOT=1 ./config.sh --unattended --url https://github.com/bench --token BENCHREGISTRATIONTOKEN --name {name} --labels myshoes,dependabot --ephemeral
export SHOESVZ_STANDIN_AUTO_JOB='{{"name": "bench", "seconds": {job_seconds}}}'
RUNNER_ALLOW_RUNASROOT=1 ./bin/runsvc.sh
"#,
        standin = standin.display()
    )
}

/// myshoes' AddInstance for one job: retried under the same runner_name after 2^n s (+ up to
/// 1 s) on any code but InvalidArgument. Returns the cloud_id and how many calls it took.
async fn add_with_retries(
    host: &PluginHost,
    name: &str,
    script: &str,
) -> anyhow::Result<(String, usize)> {
    let mut calls = 0;
    loop {
        calls += 1;
        let reply = host
            .add_instance(myshoes::AddInstanceRequest {
                runner_name: name.to_string(),
                setup_script: script.to_string(),
                resource_type: myshoes::ResourceType::Nano as i32,
                labels: vec!["self-hosted".into(), "myshoes".into()],
            })
            .await;
        match reply {
            Ok(reply) => return Ok((reply.cloud_id, calls)),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                anyhow::bail!("AddInstance refused for good: {status}")
            }
            Err(status) if calls >= 8 => anyhow::bail!("AddInstance kept failing: {status}"),
            Err(_) => {
                let backoff = Duration::from_secs(1 << calls)
                    + Duration::from_millis(u64::from(rand::random::<u16>() % 1000));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// myshoes' deletion loop: every `interval`, delete (one at a time) the runners GitHub no
/// longer lists: here, those whose job finished. Ends once `jobs` runners are deleted.
async fn delete_finished_runners(
    cluster: &LocalCluster,
    host: &PluginHost,
    interval: Duration,
    jobs: usize,
) -> anyhow::Result<()> {
    let mut client = cluster.client().await?;
    let mut deleted = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while deleted.len() < jobs {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the jobs did not end within an hour"
        );
        tokio::time::sleep(interval).await;
        let runners = client.list_runners(true).await?;
        for runner in runners {
            let finished = runner.guest_runner_state == "finished" || runner.state == "deleted";
            if finished && !deleted.contains(&runner.cloud_id) {
                match host.delete_instance(&runner.cloud_id).await {
                    Ok(()) => {}
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => anyhow::bail!("DeleteInstance failed: {status}"),
                }
                deleted.insert(runner.cloud_id);
            }
        }
    }
    Ok(())
}

/// When each runner's VM was gone (its slot free), seen every 50 ms: Unix ms by cloud_id.
async fn watch_slots_freed(
    cluster: &LocalCluster,
    jobs: usize,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut freed = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while freed.len() < jobs {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the jobs did not end within an hour"
        );
        let (runners, _) = cluster.server.fleet.list_runners(true, None, 1000).await?;
        let now = shoes_vz_model::clock::now_ms();
        for (runner, _) in runners {
            if runner.state == shoes_vz_model::RunnerState::Deleted {
                freed.entry(runner.cloud_id().to_string()).or_insert(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(freed)
}

async fn get(
    client: &mut crate::fleet_client::FleetClient,
    cloud_id: &str,
) -> anyhow::Result<pb::RunnerInfo> {
    Ok(client.get_runner(cloud_id).await?)
}
