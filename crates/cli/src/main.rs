//! `shoes-vz`: the operator CLI. Each subcommand lives in `commands/`.

use clap::{CommandFactory, Parser, Subcommand};
use shoes_vz_cli::commands::{agents, bench, completions, dev, doctor, runners, template};
use shoes_vz_telemetry::{init_logging, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "shoes-vz",
    version,
    about = "shoes-vz: ephemeral VMs for GitHub Actions runners, through myshoes"
)]
struct Cli {
    #[arg(long, global = true, env = "SHOESVZ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an all-in-one local cluster (server + agent, embedded SQLite, loopback only).
    Dev(dev::DevArgs),
    /// Look into runners on a server (list, show, ssh, logs) or delete one.
    #[command(subcommand)]
    Runners(runners::RunnersCommand),
    /// The fleet's agents: list, show, cordon, drain, revoke.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// The templates every agent serves.
    #[command(subcommand)]
    Templates(agents::TemplatesCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Build templates: the QEMU test guest, warm templates, macOS (vz) templates.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Check this machine's prerequisites for the configured backend (exit 1 on any FAIL).
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Runners(command) => runners::run(command).await,
        Command::Agents(command) => agents::run(command).await,
        Command::Templates(command) => agents::run_templates(command).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Template(command) => template::run(command).await,
        Command::Doctor(args) => {
            let status = doctor::run(args).await?;
            std::process::exit(status)
        }
        Command::Completions(args) => completions::run(&args, Cli::command()),
    }
}
