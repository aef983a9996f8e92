//! shoes-vz runner-agent: the daemon inside each runner's guest (Linux or macOS).
//!
//! At boot it reads the runner's config disk ([`shoes_vz_guest_config`]), installs the key
//! the agent logs in with and the guest's SSH host key, serves its HTTP API, and notifies
//! the host — signed with the runner's token — until the host accepts. `/refresh` does the
//! same for a guest restored from a saved state, which wakes with someone else's identity.
//! See `docs/runner-agent.md`.
//!
//! # Layout
//! - `agent`: boot, refresh and shutdown ([`RunningAgent`], [`run_once`]).
//! - `cli`: command-line flags.
//! - `identity`: authorized key, host key (+ post command), clock; user lookup; safe writes.
//! - `notify`: the signed notify with backoff; `addrs`: the guest's addresses.
//! - `http`: the API; `exec`: `/exec` commands; `setup`: the detached setup script (`/setup`);
//!   `runner_state`: `/status`'s runner state.
//! - [`vsock`]: the same API on a virtual socket (`--vsock-port`), the host's private channel
//!   under Virtualization.framework.

pub mod addrs;
pub mod agent;
pub mod cli;
pub mod exec;
mod http;
pub mod identity;
pub mod notify;
pub mod runner_state;
pub mod setup;
pub mod vsock;

pub use agent::{
    load_config, run_once, AgentOptions, NotifyState, RefreshReport, ReplyNotice, RunningAgent,
    StartError,
};
pub use exec::{ExecLimits, ExecRequest, ExecResponse};
pub use http::{RefreshRequest, SetupLogChunk, SetupLogRequest, StatusResponse};
pub use runner_state::{RunnerState, RunnerStatus};
pub use setup::{SetupOptions, SetupRequest, SetupStarted, SetupState, SetupStatus};
