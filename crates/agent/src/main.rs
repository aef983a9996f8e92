//! `shoes-vz-agent`: loads the config (file, then `SHOESVZ_*` environment, then flags) and
//! runs until SIGINT or SIGTERM, tearing its runners down on the way out.
//! `shoes-vz-agent install|uninstall` manage its macOS LaunchDaemon.

use clap::{Parser, Subcommand};
use shoes_vz_agent::config::{AgentConfig, BackendKind};
use shoes_vz_agent::RunningAgent;
use shoes_vz_telemetry::{init_logging, LogFormat};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "shoes-vz-agent",
    version,
    about = "shoes-vz agent: runs ephemeral runner VMs on this host for the server"
)]
struct Args {
    /// TOML config file (every key is optional; see the README's configuration reference).
    #[arg(long, env = "SHOESVZ_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Server gRPC URL [default: http://127.0.0.1:50051].
    #[arg(long, env = "SHOESVZ_SERVER_URL")]
    server_url: Option<String>,
    /// Data directory (identity, runner-state.json) [default: /opt/myshoes/vz].
    #[arg(long, env = "SHOESVZ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    #[arg(long, env = "SHOESVZ_RUNNERS_DIR")]
    runners_dir: Option<PathBuf>,
    #[arg(long, env = "SHOESVZ_BACKEND", value_enum)]
    backend: Option<BackendKind>,
    #[arg(long, env = "SHOESVZ_MAX_RUNNERS")]
    max_runners: Option<u32>,
    #[arg(long, env = "SHOESVZ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Check this machine's prerequisites for the configured backend, print them (as
    /// `shoes-vz doctor` does) and exit: 0 when nothing failed, 1 otherwise. Run it before
    /// serving (e.g. after install).
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the LaunchDaemon plist (KeepAlive, logs) and load it (macOS).
    Install(shoes_vz_agent::service::InstallArgs),
    /// Unload the LaunchDaemon and remove its plist (macOS).
    Uninstall(shoes_vz_agent::service::UninstallArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    match &args.command {
        Some(Command::Install(install)) => return shoes_vz_agent::service::install(install),
        Some(Command::Uninstall(uninstall)) => {
            return shoes_vz_agent::service::uninstall(uninstall)
        }
        None => {}
    }
    let mut config: AgentConfig = shoes_vz_telemetry::load_config(args.config.as_deref())?;
    if let Some(url) = args.server_url {
        config.server_url = url;
    }
    if let Some(dir) = args.data_dir {
        config.templates_dir = dir.join("templates");
        config.runners_dir = dir.join("runners");
        config.data_dir = dir;
    }
    if let Some(dir) = args.templates_dir {
        config.templates_dir = dir;
    }
    if let Some(dir) = args.runners_dir {
        config.runners_dir = dir;
    }
    if let Some(backend) = args.backend {
        config.backend = backend;
    }
    if let Some(max) = args.max_runners {
        config.capacity.max_runners = max;
    }
    if args.check {
        let report =
            shoes_vz_agent::doctor::run(&config, &shoes_vz_agent::doctor::SystemProbes).await;
        print!("{}", report.to_text());
        std::process::exit(report.exit_code());
    }
    // Tokens come only from the file or the environment, never flags: argv is world-readable.
    if let Ok(token) =
        std::env::var("SHOESVZ_AGENT_TOKEN").or_else(|_| std::env::var("SHOESVZ_TOKEN"))
    {
        config.token = Some(token);
    }
    let stop_wait = config.timeouts.stop + Duration::from_secs(10);
    let agent = RunningAgent::start(config).await?;
    shoes_vz_telemetry::wait_for_stop_signal().await?;
    tracing::info!("stopping: tearing down runners");
    agent.shutdown(stop_wait).await;
    Ok(())
}
