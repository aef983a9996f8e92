//! The `shoes-vz` operator CLI.
//!
//! # Layout
//! - [`cluster`]: the all-in-one local cluster (server + agents in one process).
//! - [`commands`]: one module per subcommand.
//! - [`stats`]: percentiles for benchmarks and timing tables.
//! - [`scratch_fs`]: a reflink filesystem for clone measurements.

pub mod cluster;
pub mod commands;
pub mod scratch_fs;
pub mod stats;
