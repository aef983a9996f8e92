//! `shoes-vz bench …`: measurements printed as tables with P50/P95 columns. Speed is measured
//! here, never asserted in tests.

pub mod clone;
pub mod control_plane;
pub mod fleet;
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
    /// The real server with N protocol-level simulated agents (no VM, disk or SSH) under
    /// myshoes' load: pairs/s, add overhead, server CPU and RSS per 1000 adds, writer lag,
    /// and the fleet's return after a server restart.
    Fleet(fleet::FleetArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::ControlPlane(args) => control_plane::run(args).await,
        BenchCommand::Clone(args) => clone::run(args).await,
        BenchCommand::Startup(args) => startup::run(args).await,
        BenchCommand::Jobs(args) => jobs::run(args).await,
        BenchCommand::Fleet(args) => fleet::run(args).await,
    }
}
