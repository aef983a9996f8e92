//! The agent's link to the server: register, open Sync, report everything, execute pushed
//! commands, and reconnect forever with exponential backoff and jitter. The agent never exits
//! because the server went away.
//!
//! Trust: a new agent enrolls with the fleet's shared enrollment token and keeps the credential
//! the server returns (0600, beside its id); it presents that credential from then on. A
//! revoked agent destroys its runners and keeps being refused.
//!
//! Liveness: both sides send a heartbeat every heartbeat interval, and the agent drops a stream
//! that has been silent for the heartbeat timeout (the server's value, at most the agent's
//! `reconnect.server_silence`); HTTP/2 pings cover the connection underneath.

use crate::error_chain;
use crate::identity::{self, Credential};
use crate::runner::{Report, RunnerManager};
use shoes_vz_model::AgentId;
use shoes_vz_protocol::agent::v1 as pb;
use shoes_vz_protocol::agent::v1::agent_service_client::AgentServiceClient;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Everything one connection attempt needs.
pub struct SyncConfig {
    pub server_url: String,
    /// The fleet's shared enrollment token: used only while the agent has no credential.
    pub enrollment_token: String,
    /// Where the agent keeps its credential.
    pub data_dir: PathBuf,
    pub tls_ca_pem: Option<Vec<u8>>,
    pub agent_id: AgentId,
    pub registration: pb::RegisterAgentRequest,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest a silent server is trusted (the server may ask for less).
    pub server_silence: Duration,
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
    #[error("the server was silent for {0:?}; the link is presumed dead")]
    Silent(Duration),
    #[error("cannot keep the credential the server issued")]
    Credential(#[source] identity::IdentityError),
}

/// Runs until `shutdown`; returns only then.
pub async fn run(
    config: SyncConfig,
    manager: Arc<RunnerManager>,
    mut events: mpsc::UnboundedReceiver<Report>,
    shutdown: CancellationToken,
) {
    let mut backoff = config.initial_backoff;
    let mut credential = match identity::load_credential(&config.data_dir) {
        Ok(credential) => credential,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot read the agent's credential; enrolling again");
            None
        }
    };
    loop {
        let mut synced = false;
        let result = session(
            &config,
            &manager,
            &mut events,
            &shutdown,
            &mut synced,
            &mut credential,
        )
        .await;
        manager.server_link(false);
        if shutdown.is_cancelled() {
            return;
        }
        if synced {
            backoff = config.initial_backoff;
        }
        match &result {
            Ok(()) => tracing::warn!("server ended the session; reconnecting"),
            Err(SessionError::Status(status)) if status.code() == tonic::Code::PermissionDenied => {
                tracing::error!(
                    message = status.message(),
                    "the server refused this agent for good (revoked?); destroying its runners"
                );
                manager.destroy_all();
                backoff = config.max_backoff;
            }
            Err(SessionError::Status(status))
                if status.code() == tonic::Code::Unauthenticated && credential.is_some() =>
            {
                // The server may have lost its records (a new store): enroll again.
                tracing::warn!(message = status.message(), "the server refused the agent's credential; enrolling again with the enrollment token");
                credential = None;
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(error), retry_in = ?backoff, "server link down; retrying")
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
    // HTTP/2 pings notice a dead connection within the silence limit even when no message
    // is due.
    let ping = (config.server_silence / 2).max(Duration::from_millis(500));
    let mut endpoint = Endpoint::from_shared(config.server_url.clone())
        .map_err(SessionError::Endpoint)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(20)))
        .http2_keep_alive_interval(ping)
        .keep_alive_timeout(ping)
        .keep_alive_while_idle(true);
    if let Some(ca) = &config.tls_ca_pem {
        let tls =
            ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls).map_err(SessionError::Endpoint)?;
    }
    endpoint.connect().await.map_err(SessionError::Connect)
}

type Client = AgentServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        shoes_vz_protocol::client::BearerToken,
    >,
>;

fn client(channel: Channel, secret: &str) -> Result<Client, SessionError> {
    let bearer = shoes_vz_protocol::client::bearer(secret).map_err(|_| SessionError::BadToken)?;
    Ok(AgentServiceClient::with_interceptor(channel, bearer))
}

/// Between `floor` and `ceiling`, or `fallback` when the server said nothing.
fn from_server(ms: u64, fallback: Duration, ceiling: Duration) -> Duration {
    if ms == 0 {
        return fallback.min(ceiling);
    }
    Duration::from_millis(ms)
        .clamp(Duration::from_millis(100), Duration::from_secs(600))
        .min(ceiling)
}

async fn session(
    config: &SyncConfig,
    manager: &Arc<RunnerManager>,
    events: &mut mpsc::UnboundedReceiver<Report>,
    shutdown: &CancellationToken,
    synced: &mut bool,
    credential: &mut Option<Credential>,
) -> Result<(), SessionError> {
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        channel = connect(config) => channel?,
    };
    let presented = credential
        .as_ref()
        .map_or(config.enrollment_token.as_str(), Credential::expose);
    let registered = client(channel.clone(), presented)?
        .register_agent(config.registration.clone())
        .await?
        .into_inner();
    if let Some(issued) = Credential::new(registered.credential.clone()) {
        identity::store_credential(&config.data_dir, &issued).map_err(SessionError::Credential)?;
        tracing::info!(
            "enrolled with the server; the agent's own credential is kept in its data dir"
        );
        *credential = Some(issued);
    }
    let Some(own) = credential.as_ref() else {
        return Err(SessionError::Status(tonic::Status::unauthenticated(
            "the server registered the agent but issued no credential",
        )));
    };
    let snapshot_every = Duration::from_millis(registered.snapshot_interval_ms.clamp(100, 600_000));
    let silence = from_server(
        registered.heartbeat_timeout_ms,
        config.server_silence,
        config.server_silence,
    );
    let heartbeat_every = from_server(registered.heartbeat_interval_ms, silence / 3, silence / 2);

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
    let mut inbound = client(channel, own.expose())?
        .sync(ReceiverStream::new(outbound_rx))
        .await?
        .into_inner();
    *synced = true;
    manager.server_link(true);
    tracing::info!(server = %config.server_url, runners = manager.runner_count(), "connected to the server");

    let mut snapshots = tokio::time::interval(snapshot_every);
    snapshots.tick().await;
    let mut heartbeats = tokio::time::interval(heartbeat_every);
    heartbeats.tick().await;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(heard + silence) => return Err(SessionError::Silent(silence)),
            message = inbound.message() => {
                heard = Instant::now();
                match message? {
                    Some(command) => manager.handle_command(command),
                    None => return Err(SessionError::Closed),
                }
            }
            Some(report) = events.recv() => {
                let message = match report {
                    Report::Status(status) => pb::agent_message::Message::RunnerUpdate(status),
                    Report::Reply(reply) => pb::agent_message::Message::GuestReply(reply),
                };
                if outbound.send(pb::AgentMessage { message: Some(message) }).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            _ = snapshots.tick() => {
                if outbound.send(snapshot_message(manager)).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
            _ = heartbeats.tick() => {
                let beat = pb::AgentMessage {
                    message: Some(pb::agent_message::Message::Heartbeat(pb::Heartbeat {
                        sent_at_unix_us: crate::unix_micros(),
                    })),
                };
                if outbound.send(beat).await.is_err() {
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

    #[test]
    fn the_server_may_shorten_but_not_stretch_the_silence_limit() {
        let ceiling = Duration::from_secs(10);
        assert_eq!(from_server(0, ceiling, ceiling), ceiling);
        assert_eq!(from_server(4_000, ceiling, ceiling), Duration::from_secs(4));
        assert_eq!(from_server(60_000, ceiling, ceiling), ceiling);
        assert_eq!(from_server(1, ceiling, ceiling), Duration::from_millis(100));
    }
}
