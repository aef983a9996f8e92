//! The `shoes-vz` operator CLI.
//!
//! # Layout
//! - [`cluster`]: the all-in-one local cluster (server + agents in one process).
//! - [`commands`]: one module per subcommand.
//! - [`stats`]: percentiles for benchmarks and timing tables.

pub mod cluster;
pub mod commands;
pub mod stats;
