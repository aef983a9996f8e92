//! `shoes-vz bench …`: measurements printed as tables with P50/P95 columns. Speed is measured
//! here, never asserted in tests.

pub mod clone;
pub mod control_plane;
pub mod jobs;
pub mod startup;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// AddInstance overhead (latency minus the backend's boot delay) and command push latency.
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Copy-on-write clone of 1 GiB and 64 GiB sparse templates, against `cp --reflink=always`.
    Clone(clone::CloneArgs),
    /// Runner startup on QEMU, cold and warm, against a bare qemu + ssh loop of the same guest.
    Startup(startup::StartupArgs),
    /// N jobs as myshoes runs them (through the plugin, stand-in runner, test backend): job
    /// throughput, queue wait and slot idle time, with and without reclaiming finished runners.
    Jobs(jobs::JobsArgs),
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

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::ControlPlane(args) => control_plane::run(args).await,
        BenchCommand::Clone(args) => clone::run(args).await,
        BenchCommand::Startup(args) => startup::run(args).await,
        BenchCommand::Jobs(args) => jobs::run(args).await,
    }
}
