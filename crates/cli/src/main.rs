//! `shoes-vz`: the operator CLI. Each subcommand lives in `commands/`.

use clap::{CommandFactory, Parser, Subcommand};
use shoes_vz_cli::commands::{bench, completions, dev, doctor, runners, template};
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
    /// List or delete runners on a server.
    #[command(subcommand)]
    Runners(runners::RunnersCommand),
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
        Command::Bench(command) => bench::run(command).await,
        Command::Template(command) => template::run(command).await,
        Command::Doctor(args) => {
            let status = doctor::run(args).await?;
            std::process::exit(status)
        }
        Command::Completions(args) => completions::run(&args, Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bash_script() -> String {
        let script = completions::script(clap_complete::Shell::Bash, &mut Cli::command());
        String::from_utf8(script).expect("utf-8 script")
    }

    /// The words offered at each level of the bash script (its `opts="…"` lines).
    fn offered_words(script: &str) -> Vec<Vec<&str>> {
        script
            .lines()
            .filter_map(|line| line.trim().strip_prefix("opts=\""))
            .map(|opts| opts.trim_end_matches('"').split_whitespace().collect())
            .collect()
    }

    #[test]
    fn bash_completions_offer_the_subcommands() {
        let script = bash_script();
        assert!(
            script.contains("complete -F"),
            "not a bash completion script"
        );
        let levels = offered_words(&script);
        let root = levels
            .iter()
            .find(|words| words.contains(&"--version"))
            .expect("the root level offers --version");
        for subcommand in [
            "dev",
            "runners",
            "bench",
            "template",
            "doctor",
            "completions",
        ] {
            assert!(
                root.contains(&subcommand),
                "root lacks {subcommand}: {root:?}"
            );
        }
        assert!(
            levels
                .iter()
                .any(|words| words.contains(&"list") && words.contains(&"delete")),
            "no level offers runners' list and delete"
        );
    }

    #[test]
    fn bash_completes_a_prefix_for_real() {
        let script = bash_script();
        // The function bash calls on <TAB>, given `shoes-vz ru`: it must answer `runners`.
        let probe = format!(
            "{script}\nCOMP_WORDS=(shoes-vz ru); COMP_CWORD=1\n_shoes__vz shoes-vz ru shoes-vz\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
        );
        let output = match std::process::Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &probe])
            .output()
        {
            Ok(output) => output,
            Err(error) => {
                shoes_vz_test_support::prerequisite_missing(
                    &format!("bash cannot run ({error})"),
                    "install bash (apt-get install bash)",
                );
                return;
            }
        };
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "runners");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
