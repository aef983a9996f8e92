//! The run, phase by phase: start the server and the simulated fleet, measure it idle, run
//! each concurrency level, fill every slot and hold it, empty it, restart the server. CPU and
//! memory of the server (and of this process, which plays the agents and myshoes) are sampled
//! around each phase; the writer's lag is sampled from `/metrics` while phases run.

use super::database::Database;
use super::load::Load;
use super::proc_stats::{self, ProcSample};
use super::report::{FleetReport, Level, Live, Percentiles, Restart, Setup, Startup, Totals};
use super::scrape::{self, LagSampler, MetricsClient};
use super::server_process::{ServerProcess, ServerSetup, Tokens};
use super::sim_agent::{Counters, Shared};
use super::sim_fleet::SimFleet;
use super::sim_runners::Delays;
use super::FleetArgs;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the writer's gauges are read while load runs, and while slots are held.
const LAG_SAMPLING_UNDER_LOAD: Duration = Duration::from_millis(500);
const LAG_SAMPLING_LIVE: Duration = Duration::from_millis(250);
/// How long the runners of a phase may take to be gone before the next phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// The whole run; the server and the agents are stopped when it returns (dropped on error).
pub async fn measure(
    args: &FleetArgs,
    server_bin: PathBuf,
    dir: &Path,
    database: &Database,
) -> anyhow::Result<FleetReport> {
    let wall = Instant::now();
    let bench_start = proc_stats::sample(None)?;
    let setup = ServerSetup::new(
        server_bin.clone(),
        dir,
        database.url().to_string(),
        Tokens::random(),
    )?;
    let (mut server, ready) = ServerProcess::start(&setup).await?;
    let idle = server.sample()?;

    let delays = Delays {
        boot: Duration::from_millis(args.boot_delay_ms),
        delete: Duration::from_millis(args.delete_delay_ms),
    };
    let fleet = SimFleet::start(
        args.agents,
        args.agents_per_connection,
        &setup.url(),
        Shared {
            enrollment_token: setup.tokens.enrollment.clone(),
            max_runners: args.max_runners,
            delays,
            counters: Counters::default(),
        },
    )?;
    let online_limit = online_timeout(args.agents);
    let (_, all) = wait_agents_online(server.metrics(), args.agents, online_limit).await?;
    let Some(all) = all else {
        anyhow::bail!(
            "not all {} simulated agents came online within {online_limit:?}; last link failure: {}",
            args.agents,
            fleet
                .shared
                .counters
                .last_failure()
                .unwrap_or_else(|| "none".into())
        );
    };
    let online = server.sample()?;
    let counters = &fleet.shared.counters;
    let mut report = FleetReport {
        setup: Setup {
            agents: args.agents,
            max_runners: args.max_runners,
            agent_connections: fleet.connections,
            database: database.kind(),
            database_detail: database.describe(),
            server_bin: server_bin.display().to_string(),
            boot_delay_ms: args.boot_delay_ms,
            delete_delay_ms: args.delete_delay_ms,
            snapshot_interval_ms: counters.snapshot_interval_ms.load(Ordering::Relaxed),
            heartbeat_interval_ms: counters.heartbeat_interval_ms.load(Ordering::Relaxed),
        },
        startup: Startup {
            server_ready_ms: ms(ready),
            agents_online_ms: ms(all),
            server_rss_idle_kib: idle.rss_kib,
            server_rss_online_kib: online.rss_kib,
            ..Startup::default()
        },
        ..FleetReport::default()
    };

    // The fleet's own cost with nothing to do: heartbeats and snapshots.
    let meter = Meter::start(&server)?;
    tokio::time::sleep(args.idle_for).await;
    let idle = meter.stop(&server)?;
    let idle_cpu_ms_per_s = idle.server_ms / idle.wall.as_secs_f64().max(0.001);
    report.startup.server_idle_cpu_ms_per_s = idle_cpu_ms_per_s;

    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let load = Load::connect(
        &setup.grpc.to_string(),
        &setup.tokens.shoes,
        max_concurrency,
        delays.boot,
    )
    .await
    .context("cannot connect to the server as myshoes")?;
    for &concurrency in &args.concurrency {
        let level = run_level(
            &mut server,
            &setup,
            &fleet,
            &load,
            concurrency,
            args.pairs_at(concurrency),
            idle_cpu_ms_per_s,
        )
        .await?;
        report.levels.push(level);
    }
    report.live = hold_every_slot(
        &mut server,
        &setup,
        &fleet,
        &load,
        args,
        max_concurrency,
        idle_cpu_ms_per_s,
    )
    .await?;

    let first_process_cpu = server.sample()?.cpu;
    report.restart = restart(&mut server, &setup, args.agents).await?;
    let last = server.sample()?;

    report.totals = Totals {
        server_cpu_s: (first_process_cpu + last.cpu).as_secs_f64(),
        bench_cpu_s: proc_stats::sample(None)?
            .cpu
            .saturating_sub(bench_start.cpu)
            .as_secs_f64(),
        wall_s: wall.elapsed().as_secs_f64(),
        agent_sessions: counters.sessions.load(Ordering::Relaxed),
        agent_link_failures: counters.link_failures.load(Ordering::Relaxed),
    };
    drop(load);
    fleet.shutdown().await;
    server.stop(&setup).await?;
    Ok(report)
}

/// `count` add+delete pairs by `concurrency` workers, with the server's CPU and memory and
/// this process's CPU around them; ends when every runner is gone and the writer is idle.
async fn run_level(
    server: &mut ServerProcess,
    setup: &ServerSetup,
    fleet: &SimFleet,
    load: &Load,
    concurrency: usize,
    count: usize,
    idle_cpu_ms_per_s: f64,
) -> anyhow::Result<Level> {
    let meter = Meter::start(server)?;
    let sampler = LagSampler::start(server.metrics().clone(), LAG_SAMPLING_UNDER_LOAD);
    let result = load.pairs(concurrency, count).await;
    let writer_lag = sampler.finish().await;
    server.check_alive(setup)?;
    // The work the level caused is counted until its last report is applied and written.
    wait_drained(server.metrics(), fleet).await?;
    let spent = meter.stop(server)?;
    let adds = result.add.latencies.len();
    let wall_s = result.wall.as_secs_f64();
    Ok(Level {
        concurrency,
        pairs: result.pairs(),
        add_errors: result.add.errors,
        delete_errors: result.delete.errors,
        first_error: result
            .add
            .first_error
            .clone()
            .or(result.delete.first_error.clone()),
        wall_s,
        pairs_per_s: if wall_s > 0.0 {
            result.pairs() as f64 / wall_s
        } else {
            0.0
        },
        add_overhead: Percentiles::of(&result.add.latencies),
        delete: Percentiles::of(&result.delete.latencies),
        server_cpu_ms_per_1000_adds: per(spent.server_ms, adds) * 1000.0,
        server_cpu_ms_per_1000_adds_net_of_idle: per(spent.net_of_idle(idle_cpu_ms_per_s), adds)
            * 1000.0,
        bench_cpu_ms_per_1000_adds: per(spent.bench_ms, adds) * 1000.0,
        server_rss_kib: spent.server.rss_kib,
        server_hwm_kib: spent.server.hwm_kib,
        writer_lag,
    })
}

/// Fills every slot, holds them live while sampling the writer, then deletes them all.
async fn hold_every_slot(
    server: &mut ServerProcess,
    setup: &ServerSetup,
    fleet: &SimFleet,
    load: &Load,
    args: &FleetArgs,
    concurrency: usize,
    idle_cpu_ms_per_s: f64,
) -> anyhow::Result<Live> {
    let slots = args.agents * args.max_runners as usize;
    let meter = Meter::start(server)?;
    let fill_sampler = LagSampler::start(server.metrics().clone(), LAG_SAMPLING_UNDER_LOAD);
    let fill = load.fill(concurrency, slots).await;
    let fill_writer_lag = fill_sampler.finish().await;
    server.check_alive(setup)?;
    // The fill's cost is counted until its writes are durable (when the server says).
    wait_writer_idle(server.metrics()).await?;
    let spent = meter.stop(server)?;

    let held = Instant::now();
    let sampler = LagSampler::start(server.metrics().clone(), LAG_SAMPLING_LIVE);
    tokio::time::sleep(args.live_for).await;
    let writer_lag = sampler.finish().await;
    let held_s = held.elapsed().as_secs_f64();
    let during = server.sample()?;
    server.check_alive(setup)?;

    let emptying = Instant::now();
    let filled = fill.cloud_ids.len();
    let (deletes, _) = load.delete_all(concurrency, fill.cloud_ids).await;
    wait_drained(server.metrics(), fleet).await?;
    let adds = fill.add.latencies.len();
    Ok(Live {
        slots,
        filled,
        fill_errors: fill.add.errors,
        first_error: fill.add.first_error.clone().or(deletes.first_error.clone()),
        fill_concurrency: concurrency.min(slots),
        fill_s: fill.wall.as_secs_f64(),
        add_overhead: Percentiles::of(&fill.add.latencies),
        server_cpu_ms_per_add: per(spent.server_ms, adds),
        server_cpu_ms_per_add_net_of_idle: per(spent.net_of_idle(idle_cpu_ms_per_s), adds),
        bench_cpu_ms_per_add: per(spent.bench_ms, adds),
        fill_writer_lag,
        held_s,
        server_rss_kib: during.rss_kib,
        server_hwm_kib: during.hwm_kib,
        writer_lag,
        emptied_s: emptying.elapsed().as_secs_f64(),
        delete: Percentiles::of(&deletes.latencies),
        delete_errors: deletes.errors,
    })
}

/// SIGTERM, then a new server on the same ports and database; the agents come back by
/// themselves (after their reconnect backoff, as real ones).
async fn restart(
    server: &mut ServerProcess,
    setup: &ServerSetup,
    agents: usize,
) -> anyhow::Result<Restart> {
    let stop = server.stop(setup).await?;
    let listening = server.restart(setup).await?;
    let limit = online_timeout(agents);
    let (first, all) = wait_agents_online(server.metrics(), agents, limit).await?;
    let online = server
        .metrics()
        .gauges()
        .await?
        .get(scrape::AGENTS_ONLINE)
        .unwrap_or(0.0);
    let sample = server.sample()?;
    // The wait began once the new process listened: count from its start.
    let since_start = |d: Option<Duration>| d.map(|d| ms(d + listening));
    Ok(Restart {
        stop_ms: ms(stop),
        listening_ms: ms(listening),
        first_agent_ms: since_start(first),
        all_agents_ms: since_start(all),
        agents_online: online as usize,
        server_rss_kib: sample.rss_kib,
    })
}

/// Waits until the server counts `agents` online; returns when the first and the last came
/// (`None`: not within `limit`).
async fn wait_agents_online(
    metrics: &MetricsClient,
    agents: usize,
    limit: Duration,
) -> anyhow::Result<(Option<Duration>, Option<Duration>)> {
    let started = Instant::now();
    let mut first = None;
    while started.elapsed() < limit {
        // A failed scrape (the server is busy accepting the fleet) is retried.
        if let Ok(gauges) = metrics.gauges().await {
            let online = gauges.get(scrape::AGENTS_ONLINE).unwrap_or(0.0) as usize;
            if online > 0 && first.is_none() {
                first = Some(started.elapsed());
            }
            if online >= agents {
                return Ok((first, Some(started.elapsed())));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((first, None))
}

/// Waits until the server's store writer has nothing queued (at once when it has no gauge).
async fn wait_writer_idle(metrics: &MetricsClient) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let queued = metrics
            .gauges()
            .await?
            .get(scrape::WRITER_QUEUE)
            .unwrap_or(0.0);
        if queued == 0.0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_TIMEOUT,
            "the server's store writer still had {queued} queued writes after {DRAIN_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no runner is left on the simulated agents or in the server, and the server's
/// store writer (when it says) has nothing queued.
async fn wait_drained(metrics: &MetricsClient, fleet: &SimFleet) -> anyhow::Result<()> {
    anyhow::ensure!(
        fleet.wait_no_runners(DRAIN_TIMEOUT).await,
        "{} runners were still on the simulated agents {DRAIN_TIMEOUT:?} after the load ended",
        fleet.live_runners()
    );
    let started = Instant::now();
    loop {
        let gauges = metrics.gauges().await?;
        let runners = gauges.get(scrape::RUNNERS).unwrap_or(0.0);
        let queued = gauges.get(scrape::WRITER_QUEUE).unwrap_or(0.0);
        if runners == 0.0 && queued == 0.0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < DRAIN_TIMEOUT,
            "the server still had {runners} runners and {queued} queued writes {DRAIN_TIMEOUT:?} after the load ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enrollment and reconnection of N agents: a minute, and more for big fleets.
fn online_timeout(agents: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(30) * agents as u32)
}

/// CPU spent by the server and by this process over a stretch of the run.
struct Meter {
    server: ProcSample,
    bench: ProcSample,
    at: Instant,
}

struct Spent {
    server_ms: f64,
    bench_ms: f64,
    wall: Duration,
    /// The server at the end of the stretch.
    server: ProcSample,
}

impl Meter {
    fn start(server: &ServerProcess) -> anyhow::Result<Meter> {
        Ok(Meter {
            server: server.sample()?,
            bench: proc_stats::sample(None)?,
            at: Instant::now(),
        })
    }

    fn stop(self, server: &ServerProcess) -> anyhow::Result<Spent> {
        let (after, bench) = (server.sample()?, proc_stats::sample(None)?);
        let ms = |before: ProcSample, after: ProcSample| {
            after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1000.0
        };
        Ok(Spent {
            server_ms: ms(self.server, after),
            bench_ms: ms(self.bench, bench),
            wall: self.at.elapsed(),
            server: after,
        })
    }
}

impl Spent {
    /// The server's CPU less what the online fleet costs it anyway (heartbeats, snapshots)
    /// over the same time: an estimate of what the load itself cost.
    fn net_of_idle(&self, idle_ms_per_s: f64) -> f64 {
        (self.server_ms - idle_ms_per_s * self.wall.as_secs_f64()).max(0.0)
    }
}

fn per(total: f64, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
