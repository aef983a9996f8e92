//! One module per `shoes-vz` subcommand.

pub mod agents;
pub mod bench;
pub mod completions;
pub mod dev;
pub mod dev_state;
pub mod doctor;
pub mod runners;
pub mod template;
pub mod template_vz;

use std::time::Duration;

pub use crate::output::Output;

/// Where the commands that talk to a running server find it.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Server gRPC address (host:port or URL).
    #[arg(
        long = "server",
        env = "SHOESVZ_SERVER_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub server: String,
    /// The server's operator token (auth.operator_token); prefer the environment variable
    /// (argv is visible to all users).
    #[arg(long, env = "SHOESVZ_OPERATOR_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM CA certificate, for a server with TLS.
    #[arg(long, env = "SHOESVZ_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl ServerArgs {
    /// The operators' API, with the operator token.
    pub async fn connect(&self) -> anyhow::Result<shoes_vz_protocol::client::OperatorClient> {
        let tls_ca_pem = match &self.tls_ca {
            Some(path) => Some(std::fs::read(path)?),
            None => None,
        };
        let options = shoes_vz_protocol::client::ConnectOptions {
            tls_ca_pem,
            connect_timeout: Some(Duration::from_secs(5)),
        };
        Ok(
            shoes_vz_protocol::client::connect_operator(&self.server, &self.token, &options)
                .await?,
        )
    }
}
