//! `shoes-vz completions SHELL`: prints the shell's completion script for the whole CLI.
//!
//! Install, e.g.: `shoes-vz completions bash > /etc/bash_completion.d/shoes-vz`,
//! `shoes-vz completions zsh > "${fpath[1]}/_shoes-vz"`,
//! `shoes-vz completions fish > ~/.config/fish/completions/shoes-vz.fish`.

use anyhow::Context;
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The completion script for `command` (the CLI's root command) in `shell`.
pub fn script(shell: clap_complete::Shell, command: &mut clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    // Into memory first: clap_complete panics when its writer fails, and stdout may be a
    // closed pipe.
    clap_complete::generate(shell, command, "shoes-vz", &mut out);
    out
}

pub fn run(args: &CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    let script = script(args.shell, &mut command);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .context("cannot write the completion script to stdout")
}
