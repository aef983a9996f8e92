//! The agent's link to the server: register, open Sync, report everything, execute pushed
//! commands, and reconnect forever with exponential backoff and jitter. The agent never exits
//! because the server went away.

use crate::error_chain;
use crate::runner::RunnerManager;
use shoes_vz_model::AgentId;
use shoes_vz_protocol::agent::v1 as pb;
use shoes_vz_protocol::agent::v1::agent_service_client::AgentServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Everything one connection attempt needs.
pub struct SyncConfig {
    pub server_url: String,
    pub token: String,
    pub tls_ca_pem: Option<Vec<u8>>,
    pub agent_id: AgentId,
    pub registration: pb::RegisterAgentRequest,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot reach the server")]
    Connect(#[source] tonic::transport::Error),
    #[error("the server refused the call")]
    Status(#[from] tonic::Status),
    #[error("invalid server URL or TLS settings")]
    Endpoint(#[source] tonic::transport::Error),
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("the server closed the stream")]
    Closed,
}

/// Runs until `shutdown`; returns only then.
pub async fn run(
    config: SyncConfig,
    manager: Arc<RunnerManager>,
    mut events: mpsc::UnboundedReceiver<pb::RunnerStatus>,
    shutdown: CancellationToken,
) {
    let mut backoff = config.initial_backoff;
    loop {
        let mut synced = false;
        let result = session(&config, &manager, &mut events, &shutdown, &mut synced).await;
        if shutdown.is_cancelled() {
            return;
        }
        if synced {
            backoff = config.initial_backoff;
        }
        match result {
            Ok(()) => tracing::warn!("server ended the session; reconnecting"),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), retry_in = ?backoff, "server link down; retrying")
            }
        }
        let wait = with_jitter(backoff);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// ±25 % jitter so a fleet of agents does not reconnect in lockstep after a server restart.
fn with_jitter(base: Duration) -> Duration {
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(factor)
}

async fn connect(config: &SyncConfig) -> Result<Channel, SessionError> {
    let mut endpoint = Endpoint::from_shared(config.server_url.clone())
        .map_err(SessionError::Endpoint)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(20)))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(ca) = &config.tls_ca_pem {
        let tls =
            ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls).map_err(SessionError::Endpoint)?;
    }
    endpoint.connect().await.map_err(SessionError::Connect)
}

async fn session(
    config: &SyncConfig,
    manager: &Arc<RunnerManager>,
    events: &mut mpsc::UnboundedReceiver<pb::RunnerStatus>,
    shutdown: &CancellationToken,
    synced: &mut bool,
) -> Result<(), SessionError> {
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        channel = connect(config) => channel?,
    };
    let bearer: MetadataValue<_> = format!("Bearer {}", config.token)
        .parse()
        .map_err(|_| SessionError::BadToken)?;
    let mut client =
        AgentServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });
    let registered = client
        .register_agent(config.registration.clone())
        .await?
        .into_inner();
    let snapshot_every = Duration::from_millis(registered.snapshot_interval_ms.clamp(100, 600_000));

    // Updates queued while disconnected are older than the snapshot sent next: drop them.
    while events.try_recv().is_ok() {}
    let (outbound, outbound_rx) = mpsc::channel::<pb::AgentMessage>(1024);
    let hello = pb::AgentMessage {
        message: Some(pb::agent_message::Message::Hello(pb::Hello {
            agent_id: config.agent_id.to_string(),
        })),
    };
    let _ = outbound.send(hello).await;
    let _ = outbound.send(snapshot_message(manager)).await;
    let mut inbound = client
        .sync(ReceiverStream::new(outbound_rx))
        .await?
        .into_inner();
    *synced = true;
    tracing::info!(server = %config.server_url, runners = manager.runner_count(), "connected to the server");

    let mut ticker = tokio::time::interval(snapshot_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = inbound.message() => match message? {
                Some(command) => manager.handle_command(command),
                None => return Err(SessionError::Closed),
            },
            Some(status) = events.recv() => {
                let update = pb::AgentMessage { message: Some(pb::agent_message::Message::RunnerUpdate(status)) };
                if outbound.send(update).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            _ = ticker.tick() => {
                if outbound.send(snapshot_message(manager)).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
        }
    }
}

fn snapshot_message(manager: &RunnerManager) -> pb::AgentMessage {
    pb::AgentMessage {
        message: Some(pb::agent_message::Message::Snapshot(pb::Snapshot {
            runners: manager.snapshot(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..1000 {
            let d = with_jitter(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(750) && d <= Duration::from_millis(1250),
                "{d:?}"
            );
        }
    }
}
