//! `shoes-vz doctor`: every prerequisite of the configured backend on this machine, a line
//! each (`ok`, `WARN: …`, `FAIL: what — what to do`), exit status 1 on any FAIL; `--output
//! json` for scripts (same exit status). The checks live in the agent
//! (`shoes_vz_agent::doctor`), which `shoes-vz-agent --check` runs too.

use crate::output::{print_json, Output};
use shoes_vz_agent::config::{AgentConfig, BackendKind};
use shoes_vz_agent::doctor::{self, SystemProbes};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The agent's TOML config (its backend, directories and notify address are checked).
    #[arg(long, env = "SHOESVZ_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Check this backend instead of the config's [default: vz on macOS, qemu elsewhere,
    /// unless the config names one].
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    #[arg(long, env = "SHOESVZ_RUNNERS_DIR")]
    runners_dir: Option<PathBuf>,
}

/// Runs the checks, prints them, and returns the exit status (0: nothing failed).
pub async fn run(args: DoctorArgs, output: Output) -> anyhow::Result<i32> {
    let mut config: AgentConfig = shoes_vz_telemetry::load_config(args.config.as_deref())?;
    match args.backend {
        Some(backend) => config.backend = backend,
        // Without a config, check what this machine would run.
        None if args.config.is_none() => {
            config.backend = if cfg!(target_os = "macos") {
                BackendKind::Vz
            } else {
                BackendKind::Qemu
            }
        }
        None => {}
    }
    if let Some(dir) = args.templates_dir {
        config.templates_dir = dir;
    }
    if let Some(dir) = args.runners_dir {
        config.runners_dir = dir;
    }
    let report = doctor::run(&config, &SystemProbes).await;
    match output {
        Output::Table => print!("{}", report.to_text()),
        Output::Json => print_json(&report_json(&report)?)?,
    }
    Ok(report.exit_code())
}

/// The report as the agent serializes it, plus how many checks failed.
fn report_json(report: &doctor::Report) -> anyhow::Result<serde_json::Value> {
    let failed = report
        .checks
        .iter()
        .filter(|check| check.status == doctor::Status::Fail)
        .count();
    let mut value = serde_json::to_value(report)?;
    value["failed"] = failed.into();
    Ok(value)
}
