//! SSH from the agent to a runner VM's guest.
//!
//! The agent generates a fresh client key per VM, waits for the guest's sshd with
//! [`wait_ready`] (pinning the host key it provisioned, so a stale VM on a reused address
//! is never mistaken for the new one), then runs commands over stdin with
//! [`SshSession::run_script`], or starts a script that outlives the connection with
//! [`detached`] (the setup script of a template without a runner-agent). A setup script
//! carries the runner registration token, so it is never put in argv, logs or errors.

mod client;
pub mod detached;
mod keys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{wait_ready, ScriptOutput, SshSession, SshTarget};
pub use keys::{authorized_key_line, generate_ed25519, write_private_key_openssh};

/// Errors talking SSH to a guest. None of them ever contains a script's contents.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("could not open a TCP connection to {addr}; check that the VM is running and its sshd listens there")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// One step of a connection attempt took too long; `step` reads like "SSH handshake with".
    #[error("{step} {addr} did not finish within {after:.1?}; the guest may still be booting")]
    StepTimeout {
        addr: SocketAddr,
        step: &'static str,
        after: Duration,
    },
    #[error("SSH protocol error talking to {addr}; the guest's sshd may still be starting, or the connection was lost")]
    Protocol {
        addr: SocketAddr,
        #[source]
        source: russh::Error,
    },
    #[error("the SSH host key of {addr} is {presented}, but {expected} was expected; refusing to connect. Another machine may hold this address, or the VM did not get the host key the agent generated for it")]
    HostKeyMismatch {
        addr: SocketAddr,
        expected: String,
        presented: String,
    },
    #[error("{addr} rejected public-key authentication for user {user:?}; check that the guest's authorized_keys for that user holds the agent's key for this VM")]
    AuthRejected { addr: SocketAddr, user: String },
    /// The readiness probe (`true`) ran but did not exit 0.
    #[error("the readiness probe on {addr} exited with {}, expected 0; the guest's shell is not usable yet", describe_status(*.exit_status))]
    ProbeFailed {
        addr: SocketAddr,
        exit_status: Option<u32>,
    },
    #[error("the launcher on {addr} did not start the script in the background ({}); check that the SSH user's home is writable and that sh, nohup, head and cat exist in the guest", describe_status(*.exit_status))]
    LaunchFailed {
        addr: SocketAddr,
        exit_status: Option<u32>,
    },
    #[error("{addr} refused to run the command; the guest's sshd must allow exec requests")]
    ExecRejected { addr: SocketAddr },
    #[error("the SSH connection to {addr} closed before the command reported an exit status; check whether the guest shut down or crashed")]
    Disconnected { addr: SocketAddr },
    #[error("SSH on {addr} was not ready after {waited:.1?} (last error: {last_error}); check that the VM booted and its sshd started, or raise the SSH ready timeout")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        last_error: String,
    },
    #[error("the script did not finish within {after:.1?} and was stopped; raise the script timeout or look for a step that hangs")]
    ScriptTimeout { after: Duration },
    #[error("could not read randomness from the operating system to generate an SSH key")]
    KeyGeneration(#[source] rand::rand_core::OsError),
    #[error("could not encode an SSH key in OpenSSH format")]
    KeyEncoding(#[source] russh::keys::ssh_key::Error),
    #[error("could not write the SSH private key to {}; check that the directory exists and the agent may write to it", .path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SshError {
    /// Errors that retrying cannot fix: the guest answered, but not as the VM we provisioned.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SshError::HostKeyMismatch { .. } | SshError::AuthRejected { .. }
        )
    }
}

fn describe_status(status: Option<u32>) -> String {
    match status {
        Some(code) => format!("status {code}"),
        None => "no exit status".to_owned(),
    }
}
