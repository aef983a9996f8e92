//! shoes-vz server: the API myshoes calls, the API agents keep a stream on, the scheduler,
//! the state store and the metrics.
//!
//! # Layout
//! - [`config`]: configuration and its validation.
//! - [`fleet`]: the live state of agents and runners and every decision on it.
//! - [`scheduler`]: pure placement rules.
//! - [`store`]: durable state (SQLite or PostgreSQL through sqlx Any); [`writer`] orders writes.
//! - [`shoes_api`], [`operator_api`], [`agent_api`]: thin gRPC handlers, each ending in
//!   [`respond`] (count, log, answer); [`auth`]: bearer
//!   tokens; [`credentials`]: agents' own credentials; [`limits`]: request sizes and the codes
//!   for requests that can never succeed.
//! - [`metrics`]: Prometheus registry; [`http`]: the `/metrics` endpoint; [`exposition`]: its
//!   two text formats and how a scrape picks one.

pub mod agent_api;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod exposition;
pub mod fleet;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod operator_api;
pub mod respond;
pub mod scheduler;
pub mod shoes_api;
pub mod store;
pub mod writer;

use anyhow::Context;
use config::ServerConfig;
use fleet::Fleet;
use shoes_vz_protocol::agent::v1::agent_service_server::AgentServiceServer;
use shoes_vz_protocol::operator::v1::operator_service_server::OperatorServiceServer;
use shoes_vz_protocol::shoes::v1::shoes_service_server::ShoesServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A running server; dropping it does not stop it, [`RunningServer::shutdown`] does.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub fleet: Arc<Fleet>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RunningServer {
    /// Validates the config, opens the store, binds the listeners and starts serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
        config.validate()?;
        let config = Arc::new(config);
        let store = store::Store::open(&config.database_url).await?;
        let (writer, _writer_task) = writer::StoreWriter::spawn(store.clone());
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(metrics::Metrics::default());
        let fleet = Fleet::load(
            Arc::clone(&config),
            store,
            writer,
            Arc::clone(&metrics),
            shutdown.clone(),
        )
        .await?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for gRPC; is another server running?",
                    config.listen
                )
            })?;
        let grpc_addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();

        if config.auth.agent_token.is_none() {
            tracing::warn!("auth.agent_token is not set: agents enroll with myshoes' token; set a separate enrollment token (SHOESVZ_AGENT_TOKEN)");
        }
        let shoes_auth = auth::BearerAuth::new(
            config.auth.token.as_deref(),
            "shoes",
            "myshoes' token (auth.token, SHOESVZ_TOKEN)",
            Arc::clone(&metrics),
        );
        let operator_auth = auth::BearerAuth::new(
            config.auth.operator_token.as_deref(),
            "operator",
            "the operator token (auth.operator_token, SHOESVZ_OPERATOR_TOKEN)",
            Arc::clone(&metrics),
        );
        let shoes = tonic::service::interceptor::InterceptedService::new(
            ShoesServiceServer::new(shoes_api::ShoesApi::new(Arc::clone(&fleet)))
                .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
            move |r| shoes_auth.check(r),
        );
        let operators = OperatorServiceServer::with_interceptor(
            operator_api::OperatorApi::new(Arc::clone(&fleet)),
            move |r| operator_auth.check(r),
        );
        let agents = AgentServiceServer::new(agent_api::AgentApi::new(Arc::clone(&fleet)))
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES);
        // HTTP/2 pings notice a dead connection even while no heartbeat is due.
        let keepalive = config.timeouts.agent_offline_after / 2;
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive));
        if let Some(tls) = &config.tls {
            let cert = std::fs::read(&tls.cert)
                .with_context(|| format!("cannot read tls.cert {}", tls.cert.display()))?;
            let key = std::fs::read(&tls.key)
                .with_context(|| format!("cannot read tls.key {}", tls.key.display()))?;
            builder = builder
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(cert, key)),
                )
                .context("invalid TLS certificate or key")?;
        }
        let router = builder
            .layer(limits::InvalidRequestLayer)
            .add_service(shoes)
            .add_service(operators)
            .add_service(agents);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(error) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %error, "gRPC server stopped");
            }
        });

        let metrics_addr = match config.metrics_listen {
            Some(addr) => Some(
                http::serve_metrics(addr, Arc::clone(&fleet), shutdown.clone(), &mut tasks).await?,
            ),
            None => None,
        };

        tasks.spawn(fleet::retention::prune_periodically(
            Arc::clone(&fleet),
            shutdown.clone(),
        ));
        let liveness = Arc::clone(&fleet);
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => liveness.tick(),
                }
            }
        });
        tracing::info!(%grpc_addr, ?metrics_addr, tls = config.tls.is_some(), "shoes-vz server listening");
        Ok(RunningServer {
            grpc_addr,
            metrics_addr,
            fleet,
            shutdown,
            tasks,
        })
    }

    /// Stops serving, ends agent sessions, and waits for queued store writes. The store
    /// writer itself ends when the last handle to the fleet is dropped.
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.fleet.flush().await;
    }
}
