//! `shoes-vz-agent install|uninstall`: the agent as a macOS LaunchDaemon (KeepAlive, logs),
//! written by the plain-Rust plist code of the vz crate. Loading it needs macOS; elsewhere the
//! plist is still written (for inspection) and the load step says it is unsupported.
//!
//! The daemon runs as a normal user (`--user`, default the user who ran `sudo`): VMs started
//! as root fail on macOS 15+ (see `shoes_vz_vz::launchd`). The log directory is given to
//! that user.

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
    /// The user the agent and its VMs run as (never root) [default: $SUDO_USER, the user who
    /// ran sudo]. Log it in automatically or keep its login keychain unlocked (docs/macos.md §5).
    #[arg(long)]
    pub user: Option<String>,
}

/// The daemon's user: `--user`, else the user who ran `sudo`; root is refused by the plist
/// rules with what to do.
pub fn daemon_user(flag: Option<&str>, sudo_user: Option<&str>) -> anyhow::Result<String> {
    match flag.or(sudo_user) {
        Some(user) => Ok(user.to_string()),
        None => anyhow::bail!(
            "which user should the agent run as? pass --user NAME (a normal account that logs in \
             automatically or keeps its login keychain unlocked; never root: macOS 15+ refuses \
             to start VMs for root)"
        ),
    }
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
    let sudo_user = std::env::var("SUDO_USER").ok();
    let user = daemon_user(args.user.as_deref(), sudo_user.as_deref())?;
    let mut spec = DaemonSpec::new(program, args.config.clone(), &user);
    spec.log_dir.clone_from(&args.log_dir);
    let outcome = launchd::install(&spec, &args.plist_dir)?;
    give_to(&spec.log_dir, &user)?;
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

/// Gives `dir` to `user` (the daemon writes its logs there). Only root can; as anyone else the
/// directory is already the caller's.
fn give_to(dir: &std::path::Path, user: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let account = nix::unistd::User::from_name(user)
        .with_context(|| format!("cannot look up user {user}"))?
        .with_context(|| {
            format!("there is no user {user} on this host; pass --user with an existing account")
        })?;
    nix::unistd::chown(dir, Some(account.uid), Some(account.gid))
        .with_context(|| format!("cannot give {} to {user}", dir.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_user_comes_from_the_flag_then_sudo() {
        assert_eq!(daemon_user(Some("ci"), Some("admin")).expect("flag"), "ci");
        assert_eq!(daemon_user(None, Some("admin")).expect("sudo"), "admin");
        let error = daemon_user(None, None).expect_err("nobody").to_string();
        assert!(
            error.contains("--user") && error.contains("root"),
            "{error}"
        );
    }
}
