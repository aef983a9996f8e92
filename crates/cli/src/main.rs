//! `shoes-vz`: the operator CLI. Each subcommand lives in `commands/`.

use clap::{CommandFactory, Parser, Subcommand};
use shoes_vz_cli::commands::{agents, bench, completions, dev, doctor, runners, template};
use shoes_vz_cli::output::Output;
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
    /// `table` for people; `json` for scripts: only JSON on stdout, progress and warnings on
    /// stderr (each command's --help says what its JSON holds).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an all-in-one local cluster (server + agent, embedded SQLite, loopback only).
    ///
    /// --output json: once up, one line {"event": "up", "backend", "grpc_addr", "metrics_url",
    /// "data_dir", "tokens_file" (an env file, mode 0600, with the tokens: never printed),
    /// "reused_state"}; after --demo, one line {"event": "demo", "runners": [{"path",
    /// "add_instance_ms", "delete_instance_ms", "timings_ms"}], "add_instance_ms": {path:
    /// percentiles}}.
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
    ///
    /// --output json: {"backend", "ok", "failed": N, "checks": [{"name", "status":
    /// "ok"|"warn"|"fail", "detail", "fix"?}]}, with the same exit status.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// --output does not apply: the script is the output.
    Completions(completions::CompletionsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let output = cli.output;
    match cli.command {
        Command::Dev(args) => dev::run(args, output).await,
        Command::Runners(command) => runners::run(command, output).await,
        Command::Agents(command) => agents::run(command, output).await,
        Command::Templates(command) => agents::run_templates(command, output).await,
        Command::Bench(command) => bench::run(command, output).await,
        Command::Template(command) => template::run(command, output).await,
        Command::Doctor(args) => {
            let status = doctor::run(args, output).await?;
            std::process::exit(status)
        }
        Command::Completions(args) => completions::run(&args, Cli::command()),
    }
}
