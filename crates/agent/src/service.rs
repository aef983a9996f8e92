//! `shoes-vz-agent install|uninstall`: the agent as a macOS LaunchDaemon (KeepAlive, logs),
//! written by the plain-Rust plist code of the vz crate. Loading it needs macOS; elsewhere the
//! plist is still written (for inspection) and the load step says it is unsupported.

use anyhow::Context;
use shoes_vz_vz::launchd::{self, DaemonSpec, LaunchctlAction};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The agent's TOML config (may hold the token: keep it mode 0600).
    #[arg(long, default_value = launchd::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Where the plist goes.
    #[arg(long, default_value = launchd::LAUNCH_DAEMONS_DIR)]
    pub plist_dir: PathBuf,
    /// Where the agent's stdout/stderr logs go.
    #[arg(long, default_value = launchd::DEFAULT_LOG_DIR)]
    pub log_dir: PathBuf,
    /// The agent binary to run [default: this executable]. Sign it first (packaging/macos/sign-agent.sh).
    #[arg(long)]
    pub program: Option<PathBuf>,
    /// Write the plist only; do not load it with launchctl.
    #[arg(long)]
    pub no_load: bool,
}

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[arg(long, default_value = launchd::LAUNCH_DAEMONS_DIR)]
    pub plist_dir: PathBuf,
    /// Remove the plist only; do not unload it with launchctl.
    #[arg(long)]
    pub no_unload: bool,
}

pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let program = match &args.program {
        Some(path) => path.clone(),
        None => {
            std::env::current_exe().context("cannot find this executable's path; pass --program")?
        }
    };
    let mut spec = DaemonSpec::new(program, args.config.clone());
    spec.log_dir.clone_from(&args.log_dir);
    let outcome = launchd::install(&spec, &args.plist_dir)?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "{} {}",
        if outcome.changed {
            "wrote"
        } else {
            "unchanged:"
        },
        outcome.plist_path.display()
    );
    if !args.no_load {
        // Reload so a changed plist takes effect; a daemon that was not loaded is fine.
        let _ = launchd::launchctl(LaunchctlAction::Bootout, &spec.label, &outcome.plist_path);
        launchd::launchctl(LaunchctlAction::Bootstrap, &spec.label, &outcome.plist_path)
            .context("cannot load the LaunchDaemon (use --no-load to only write the plist)")?;
        println!("loaded {}; logs in {}", spec.label, spec.log_dir.display());
    }
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let plist = launchd::plist_path(&args.plist_dir, launchd::DEFAULT_LABEL);
    if !args.no_unload && plist.exists() {
        launchd::launchctl(LaunchctlAction::Bootout, launchd::DEFAULT_LABEL, &plist)
            .context("cannot unload the LaunchDaemon (use --no-unload to only remove the plist)")?;
    }
    if launchd::uninstall(launchd::DEFAULT_LABEL, &args.plist_dir)? {
        println!("removed {}", plist.display());
    } else {
        println!("no LaunchDaemon plist at {}", plist.display());
    }
    Ok(())
}
