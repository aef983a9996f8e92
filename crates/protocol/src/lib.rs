//! The gRPC API of shoes-vz, generated at build time from `proto/`.
//!
//! # Layout
//! - [`shoes`]: `shoes.vz.shoes.v1`, the API for myshoes (through the plugin).
//! - [`operator`]: `shoes.vz.operator.v1`, the API for operators (the `shoes-vz` CLI).
//! - [`agent`]: `shoes.vz.agent.v1`, the API between the server and its agents.
//! - [`client`]: connecting to a server with a bearer token (and TLS).
//! - [`link`]: the agent link's messages to and from the model's commands and reports.

pub mod client;
pub mod link;

#[allow(clippy::all)]
pub mod shoes {
    pub mod v1 {
        tonic::include_proto!("shoes.vz.shoes.v1");
    }
}

#[allow(clippy::all)]
pub mod operator {
    pub mod v1 {
        tonic::include_proto!("shoes.vz.operator.v1");
    }
}

#[allow(clippy::all)]
pub mod agent {
    pub mod v1 {
        tonic::include_proto!("shoes.vz.agent.v1");
    }
}

/// The `shoes_type` every AddInstance answer carries.
pub const SHOES_TYPE: &str = "shoes-vz";
