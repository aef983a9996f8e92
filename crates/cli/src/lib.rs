//! The `shoes-vz` operator CLI.
//!
//! # Layout
//! - [`cluster`]: the all-in-one local cluster (server + agents in one process).
//! - [`commands`]: one module per subcommand.
//! - [`output`]: `--output table|json`: JSON alone on stdout, people's lines on stderr.
//! - [`fleet_client`]: both of a server's APIs (myshoes', operators') in one client.
//! - [`plugin_client`]: driving `shoes-vz-plugin` the way myshoes does (go-plugin protocol).
//! - [`workspace_bin`]: finding (or building) this project's other binaries.
//! - [`progress`]: long waits shown as a spinner on a terminal, plain lines otherwise.
//! - [`stats`]: percentiles for benchmarks and timing tables.
//! - [`qemu_templates`]: the QEMU test guest and its warm template, built on first use.
//! - [`scratch_fs`]: a reflink filesystem for clone measurements.
//! - [`download`]: resume-safe downloads (HTTP Range) of restore images.

pub mod cluster;
pub mod commands;
pub mod download;
pub mod fleet_client;
pub mod output;
pub mod plugin_client;
pub mod progress;
pub mod qemu_templates;
pub mod scratch_fs;
pub mod stats;
pub mod workspace_bin;
