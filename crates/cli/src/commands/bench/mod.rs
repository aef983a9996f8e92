//! `shoes-vz bench …`: measurements printed as tables with P50/P95 columns, or with
//! `--output json` as one JSON object on stdout (the same numbers, in milliseconds or seconds
//! as the key says; percentiles as `{"p50", "p95", "samples"}`, see `stats::p50_p95_json`), the
//! lines announcing a run on stderr. Speed is measured here, never asserted in tests.

use crate::output::Output;

pub mod clone;
pub mod control_plane;
pub mod fleet;
pub mod jobs;
pub mod startup;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// AddInstance overhead (latency minus the backend's boot delay) and command push latency.
    ///
    /// --output json: {"runners", "agents", "max_runners", "boot_delay_ms", "wall_s",
    /// "add_instance_overhead_ms", "command_push_ms", "delete_instance_ms"} (percentiles).
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Copy-on-write clone of 1 GiB and 64 GiB sparse templates, against `cp --reflink=always`.
    ///
    /// --output json: {"runs", "filesystem", "templates": [{"template", "shoes_vz_ms",
    /// "cp_ms" (percentiles), "shoes_vz_over_cp_p50"}], "large_over_small_p50"}.
    Clone(clone::CloneArgs),
    /// Runner startup on QEMU, cold and warm, against a bare qemu + ssh loop of the same guest.
    ///
    /// --output json: {"runs", "accel", "wall_s", "cold_ms", "warm_ms" (each {"clone",
    /// "boot_to_ip", "boot_to_ssh", "total"} percentiles), "bare_ms",
    /// "cold_boot_to_ssh_over_bare_p50", "cold_total_over_bare_p50",
    /// "warm_total_over_cold_total_p50", "warm_start_fallbacks"}.
    Startup(startup::StartupArgs),
    /// N jobs as myshoes runs them (through the plugin, stand-in runner, test backend): job
    /// throughput, queue wait and slot idle time, with and without reclaiming finished runners.
    ///
    /// --output json: {"jobs", "job_seconds", "slots", "delete_interval_s", "modes":
    /// [{"reclaim_finished", "jobs", "wall_s", "jobs_per_min", "adds_per_job", "queue_wait_ms",
    /// "slot_idle_ms" (percentiles)}]}.
    Jobs(jobs::JobsArgs),
    /// The real server with N protocol-level simulated agents (no VM, disk or SSH) under
    /// myshoes' load: pairs/s, add overhead, server CPU and RSS per 1000 adds, writer lag,
    /// and the fleet's return after a server restart.
    Fleet(fleet::FleetArgs),
}

/// `load average 1.52 1.20 0.98 (2 cores)`: other work on the machine skews every number
/// here, so each table says how busy the host was.
pub(crate) fn load_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {load} ({cores} cores)")
}

pub async fn run(command: BenchCommand, output: Output) -> anyhow::Result<()> {
    match command {
        BenchCommand::ControlPlane(args) => control_plane::run(args, output).await,
        BenchCommand::Clone(args) => clone::run(args, output).await,
        BenchCommand::Startup(args) => startup::run(args, output).await,
        BenchCommand::Jobs(args) => jobs::run(args, output).await,
        BenchCommand::Fleet(args) => fleet::run(args, output).await,
    }
}
