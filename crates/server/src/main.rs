//! `shoes-vz-server`: loads the config (file, then `SHOESVZ_*` environment, then flags) and
//! serves until SIGINT or SIGTERM.

use clap::Parser;
use shoes_vz_server::config::{ServerConfig, TlsConfig};
use shoes_vz_server::RunningServer;
use shoes_vz_telemetry::{init_logging, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "shoes-vz-server",
    version,
    about = "shoes-vz server: schedules ephemeral runner VMs onto agents for myshoes"
)]
struct Args {
    /// TOML config file (every key is optional; see the README's configuration reference).
    #[arg(long, env = "SHOESVZ_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "SHOESVZ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9464].
    #[arg(long, env = "SHOESVZ_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// State store: sqlite:///path/state.db?mode=rwc or postgres://user@host/db.
    #[arg(long, env = "SHOESVZ_DATABASE_URL")]
    database_url: Option<String>,
    /// TLS certificate (PEM); needs --tls-key.
    #[arg(long, env = "SHOESVZ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "SHOESVZ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "SHOESVZ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let mut config: ServerConfig = shoes_vz_telemetry::load_config(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    if let Some(url) = args.database_url {
        config.database_url = url;
    }
    // Tokens come only from the file or the environment, never flags: argv is world-readable.
    if let Ok(token) = std::env::var("SHOESVZ_TOKEN") {
        config.auth.token = Some(token);
    }
    if let Ok(token) = std::env::var("SHOESVZ_OPERATOR_TOKEN") {
        config.auth.operator_token = Some(token);
    }
    if let Ok(token) = std::env::var("SHOESVZ_AGENT_TOKEN") {
        config.auth.agent_token = Some(token);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsConfig { cert, key });
    }
    let mut server = RunningServer::start(config).await?;
    shoes_vz_telemetry::wait_for_stop_signal().await?;
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
