//! shoes-vz-plugin: the myshoes provider. myshoes starts this binary with hashicorp/go-plugin
//! (gRPC protocol) for every AddInstance and DeleteInstance, then kills it; the plugin forwards
//! each call to a shoes-vz server's `ShoesService` and answers with the codes myshoes acts on.
//!
//! # Layout
//! - [`handshake`]: the go-plugin side of the handshake (magic cookie, versions, the stdout line).
//! - [`config`]: configuration from the environment myshoes passes on (`SHOESVZ_*`).
//! - [`logging`]: hclog-style JSON lines on stderr, which go-plugin hosts parse.
//! - [`deadline`]: the time budget of a call (configured budget, capped by `grpc-timeout`).
//! - [`forward`]: the shoes-vz server client: lazy connect with retry, calls under a deadline.
//! - [`mapping`]: myshoes messages ↔ shoes-vz messages, and gRPC codes myshoes acts on.
//! - [`shoes_service`]: the `whywaita.myshoes.Shoes` service.
//! - [`controller`]: `plugin.GRPCController/Shutdown` (answer, then exit).
//! - [`stdio`]: `plugin.GRPCStdio/StreamStdio` (an empty stream: nothing to mirror).
//! - [`serve`]: listener, handshake line, the gRPC server, SIGINT ignored.
//! - [`proto`]: the generated myshoes and go-plugin gRPC code.

pub mod config;
pub mod controller;
pub mod deadline;
pub mod forward;
pub mod handshake;
pub mod logging;
pub mod mapping;
pub mod serve;
pub mod shoes_service;
pub mod stdio;

/// Generated from `proto/` at build time.
#[allow(clippy::all)]
pub mod proto {
    /// `whywaita.myshoes`: myshoes' provider API.
    pub mod myshoes {
        tonic::include_proto!("whywaita.myshoes");
    }
    /// `plugin`: go-plugin's controller and stdio services.
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
}
