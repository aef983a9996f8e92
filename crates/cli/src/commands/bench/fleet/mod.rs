//! `shoes-vz bench fleet`: the real `shoes-vz-server` in its own process, N simulated agents
//! speaking the real agent protocol (no VM, no disk, no SSH) and myshoes' load, all measured in
//! one run: add+delete pairs/s and add overhead at each concurrency, server CPU and memory per
//! 1000 adds, the store writer's lag with every slot live, and how long the fleet takes to come
//! back online after a server restart.
//!
//! # Layout
//! - [`phases`]: the run, phase by phase, and what each measures.
//! - [`server_process`]: the server binary as a child process (config, tokens, ports, restart).
//! - [`database`]: a fresh store per run (SQLite in the temp dir, or a new PostgreSQL schema).
//! - [`sim_fleet`], [`sim_agent`], [`sim_runners`]: the simulated agents.
//! - [`load`]: AddInstance / DeleteInstance workers.
//! - [`scrape`]: the server's `/metrics` gauges; [`proc_stats`]: CPU and RSS from `/proc`.
//! - [`report`]: the results as tables or JSON.

pub mod database;
pub mod load;
pub mod phases;
pub mod proc_stats;
pub mod report;
pub mod scrape;
pub mod server_process;
pub mod sim_agent;
pub mod sim_fleet;
pub mod sim_runners;

use super::super::Output;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use shoes_vz_agent::error_chain;

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Runner slots per simulated agent.
    #[arg(long, default_value_t = 2)]
    pub max_runners: u32,
    /// PostgreSQL to test (a new schema is made in it for the run and dropped after);
    /// default: a new SQLite file in a temp dir. The URL may hold a password: prefer the
    /// environment variable.
    #[arg(long, env = "SHOESVZ_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Concurrency levels of the add+delete loop, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    pub concurrency: Vec<usize>,
    /// Add+delete pairs per level (a quarter of them at concurrency 1).
    #[arg(long, default_value_t = 2000)]
    pub pairs_per_level: usize,
    /// How long a simulated runner takes to boot (subtracted from AddInstance latency).
    #[arg(long, default_value_t = 0)]
    pub boot_delay_ms: u64,
    /// How long a simulated runner takes to go after its DeleteRunner.
    #[arg(long, default_value_t = 0)]
    pub delete_delay_ms: u64,
    /// How long every slot is held live while the writer's lag is sampled (one snapshot
    /// round of the server's default 10 s, and some).
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    pub live_for: Duration,
    /// How long the server's CPU is measured with the agents online and no load.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_for: Duration,
    /// Simulated agents per HTTP/2 connection; 1 gives each its own, as real agents have.
    #[arg(long, default_value_t = 1)]
    pub agents_per_connection: usize,
    /// The server binary [default: shoes-vz-server beside this program].
    #[arg(long, env = "SHOESVZ_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,
}

impl FleetArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.agents >= 1, "--agents must be at least 1");
        anyhow::ensure!(self.max_runners >= 1, "--max-runners must be at least 1");
        anyhow::ensure!(
            !self.concurrency.is_empty() && self.concurrency.iter().all(|c| *c >= 1),
            "--concurrency takes levels of at least 1, e.g. 1,16,128"
        );
        anyhow::ensure!(
            self.pairs_per_level >= 1,
            "--pairs-per-level must be at least 1"
        );
        anyhow::ensure!(
            self.agents_per_connection >= 1,
            "--agents-per-connection must be at least 1"
        );
        Ok(())
    }

    /// Pairs at concurrency `level`: a quarter at 1 (it is the slowest and steadiest).
    pub fn pairs_at(&self, level: usize) -> usize {
        if level == 1 {
            self.pairs_per_level.div_ceil(4)
        } else {
            self.pairs_per_level
        }
    }
}

pub async fn run(args: FleetArgs, output: Output) -> anyhow::Result<()> {
    args.validate()?;
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path; pass --server-bin")?
            .with_file_name("shoes-vz-server"),
    };
    // Each agent holds a connection (and the server its end): lift the soft limit if needed.
    let needed = (args.agents.div_ceil(args.agents_per_connection) + 1024) as u64;
    raise_open_files(needed)?;
    let dir = tempfile::Builder::new()
        .prefix("shoes-vz-bench-fleet-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let database = database::Database::prepare(args.database_url.as_deref(), dir.path()).await?;
    let outcome = phases::measure(&args, server_bin, dir.path(), &database).await;
    database.clean_up().await;
    let report = outcome?;
    match output {
        Output::Table => print!("{}", report::render_table(&report)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::to_json(&report))?
        ),
    }
    Ok(())
}

/// Raises this process's soft RLIMIT_NOFILE to at least `needed` (children inherit it).
fn raise_open_files(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(());
    }
    anyhow::ensure!(
        hard >= needed,
        "{needed} open files are needed but the hard limit is {hard}; raise it (ulimit -Hn, or LimitNOFILE= in a unit) or pass --agents-per-connection"
    );
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard)
        .context("cannot raise the soft RLIMIT_NOFILE")?;
    eprintln!("raised the open-files limit from {soft} to {needed} (hard limit {hard})");
    Ok(())
}
