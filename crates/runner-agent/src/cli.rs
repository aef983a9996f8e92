//! Command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shoes_vz_telemetry::LogFormat;

use crate::agent::AgentOptions;
use crate::identity::{IdentityOptions, DEFAULT_HOST_KEY_PATH};
use crate::notify::NotifyOptions;
use crate::setup::SetupOptions;

/// The shoes-vz guest daemon: installs this runner's identity from its config disk,
/// notifies the host, and serves /health, /status, /exec, /refresh and /setup.
#[derive(Debug, Parser)]
#[command(name = "shoes-vz-runner-agent", version)]
pub struct Cli {
    /// The config disk (block device or image file). Default: search the block devices
    /// for the FAT volume labelled SHOESVZCFG.
    #[arg(long, value_name = "PATH")]
    pub config_device: Option<PathBuf>,

    /// Treat DIR as the guest's `/` for every file written or read (home directories,
    /// host keys, the runner directory, /etc/passwd). For tests and the test backend; the
    /// clock is never touched under a --root other than `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Serve HTTP here instead of the config's http_listen (e.g. 127.0.0.1:0).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Where to install the SSH host private key (with `.pub` beside it); repeatable.
    #[arg(long = "host-key-path", value_name = "PATH", default_value = DEFAULT_HOST_KEY_PATH)]
    pub host_key_paths: Vec<PathBuf>,

    /// Where to install the SSH host key in dropbear's own format (no conversion needed);
    /// repeatable.
    #[arg(long = "dropbear-host-key-path", value_name = "PATH")]
    pub dropbear_host_key_paths: Vec<PathBuf>,

    /// Shell command run after the host key is installed, e.g. to convert it for dropbear:
    /// 'dropbearconvert openssh dropbear "$SHOES_VZ_HOST_KEY" /etc/dropbear/dropbear_ed25519_host_key'.
    /// Environment: SHOES_VZ_HOST_KEY, SHOES_VZ_HOST_PUBLIC_KEY, SHOES_VZ_ROOT.
    #[arg(long, value_name = "CMD")]
    pub host_key_post_cmd: Option<String>,

    /// Install the identity, notify the host until it accepts, and exit (no HTTP server).
    #[arg(long)]
    pub once: bool,

    /// Seconds to wait at boot for the config disk to appear.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub config_wait: u64,

    /// Where the daemon keeps its state (the setup script's files and log), inside --root.
    #[arg(long, value_name = "DIR", default_value = crate::setup::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// The setup script's log is rotated past this many bytes (at most twice it is kept).
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub setup_log_max_bytes: u64,

    /// Give up notifying after this many seconds (default: keep trying).
    #[arg(long, value_name = "SECS")]
    pub notify_timeout: Option<u64>,

    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Also serve the API on this vsock port, the host's private channel under
    /// Virtualization.framework (macOS guests: 52080, shoes_vz_guest_config::VSOCK_PORT).
    #[arg(long, value_name = "PORT")]
    pub vsock_port: Option<u32>,
}

impl Cli {
    pub fn options(&self) -> AgentOptions {
        AgentOptions {
            config_device: self.config_device.clone(),
            identity: IdentityOptions {
                root: self.root.clone(),
                host_key_paths: self.host_key_paths.clone(),
                dropbear_host_key_paths: self.dropbear_host_key_paths.clone(),
                host_key_post_cmd: self.host_key_post_cmd.clone(),
            },
            listen: self.listen,
            config_wait: Duration::from_secs(self.config_wait),
            notify: NotifyOptions {
                give_up_after: self.notify_timeout.map(Duration::from_secs),
                ..NotifyOptions::default()
            },
            setup: SetupOptions {
                state_dir: self.state_dir.clone(),
                log_max_bytes: self.setup_log_max_bytes,
                ..SetupOptions::default()
            },
            vsock_port: self.vsock_port,
            ..AgentOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_suit_a_real_guest() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from(["shoes-vz-runner-agent"])?;
        let opts = cli.options();
        assert_eq!(opts.identity.root, PathBuf::from("/"));
        assert_eq!(
            opts.identity.host_key_paths,
            [PathBuf::from(DEFAULT_HOST_KEY_PATH)]
        );
        assert!(opts.config_device.is_none() && opts.listen.is_none());
        assert!(opts.notify.give_up_after.is_none());
        Ok(())
    }

    #[test]
    fn host_key_paths_repeat_and_replace_the_default() -> Result<(), clap::Error> {
        let cli = Cli::try_parse_from([
            "shoes-vz-runner-agent",
            "--host-key-path",
            "/etc/ssh/a",
            "--host-key-path",
            "/etc/dropbear/b",
            "--listen",
            "127.0.0.1:0",
            "--once",
        ])?;
        assert_eq!(
            cli.options().identity.host_key_paths,
            [
                PathBuf::from("/etc/ssh/a"),
                PathBuf::from("/etc/dropbear/b")
            ]
        );
        assert!(cli.once);
        Ok(())
    }
}
