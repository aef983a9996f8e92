//! A simulated agent on the real AgentService protocol, as crates/agent/src/sync.rs speaks it:
//! RegisterAgent with the fleet's enrollment token (once; then with the credential the server
//! issued), Sync with `authorization: Bearer <credential>` opening with a Hello and a
//! Snapshot, snapshots every snapshot interval and heartbeats every heartbeat interval the
//! server asked for, every runner change at once, and the link dropped after the heartbeat
//! timeout of silence. A lost link is retried forever with exponential backoff and ±25 %
//! jitter (the real agent's defaults), so a restarted server sees the fleet come back by itself.

use super::sim_runners::{Delays, SimRunners};
use shoes_vz_model::AgentId;
use shoes_vz_protocol::agent::v1 as pb;
use shoes_vz_protocol::agent::v1::agent_service_client::AgentServiceClient;
use shoes_vz_protocol::client::BearerToken;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The real agent's `[reconnect]` defaults (crates/agent/src/config.rs).
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const SERVER_SILENCE: Duration = Duration::from_secs(10);
/// A RegisterAgent or the opening of Sync that takes longer is a failed attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What every simulated agent shares.
pub struct Shared {
    pub enrollment_token: String,
    pub max_runners: u32,
    pub delays: Delays,
    pub counters: Counters,
}

/// The simulated fleet's own view, for the report and for waiting.
#[derive(Default)]
pub struct Counters {
    /// Runners holding a slot on some simulated agent.
    pub live_runners: Arc<AtomicI64>,
    /// Agents with a synced Sync stream right now.
    pub linked: AtomicI64,
    /// Sync streams opened, reconnections included.
    pub sessions: AtomicU64,
    /// Attempts or sessions that ended in an error.
    pub link_failures: AtomicU64,
    pub creates: AtomicU64,
    pub deletes: AtomicU64,
    /// The intervals the server asked for at registration.
    pub snapshot_interval_ms: AtomicU64,
    pub heartbeat_interval_ms: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl Counters {
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    fn failed(&self, error: &SessionError) {
        self.link_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(super::error_chain(error));
        }
    }
}

/// How an agent reaches the server: its own connection per session (as a real agent), or a
/// connection shared with other simulated agents (tonic reconnects it on its own).
pub enum Link {
    Own(Box<Endpoint>),
    Shared(Channel),
}

impl Link {
    async fn channel(&self) -> Result<Channel, SessionError> {
        match self {
            Link::Own(endpoint) => endpoint.connect().await.map_err(SessionError::Connect),
            Link::Shared(channel) => Ok(channel.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach the server")]
    Connect(#[source] tonic::transport::Error),
    #[error("the server refused the call")]
    Status(#[from] tonic::Status),
    #[error("the server did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("the server registered the agent but issued no credential")]
    NoCredential,
    #[error("the server closed the stream")]
    Closed,
    #[error("the server was silent for {0:?}")]
    Silent(Duration),
}

type Client = AgentServiceClient<InterceptedService<Channel, BearerToken>>;

fn client(channel: Channel, secret: &str) -> Result<Client, SessionError> {
    let bearer = shoes_vz_protocol::client::bearer(secret).map_err(|_| SessionError::BadToken)?;
    Ok(AgentServiceClient::with_interceptor(channel, bearer))
}

pub struct SimAgent {
    id: AgentId,
    registration: pb::RegisterAgentRequest,
    shared: Arc<Shared>,
    link: Link,
    /// The server-issued credential, kept in memory (the real agent keeps it on disk).
    credential: Option<String>,
    runners: SimRunners,
}

/// Counts the agent linked while a synced session lasts.
struct Linked<'a>(&'a Counters);

impl Drop for Linked<'_> {
    fn drop(&mut self) {
        self.0.linked.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimAgent {
    pub fn new(index: usize, shared: Arc<Shared>, link: Link) -> SimAgent {
        let id = AgentId::generate();
        let registration = pb::RegisterAgentRequest {
            agent_id: id.to_string(),
            hostname: format!("bench-sim-{index:05}"),
            capacity: Some(pb::AgentCapacity {
                max_runners: shared.max_runners,
                cpu_cores: 256,
                memory_mib: 1024 * 1024,
            }),
            templates: vec![pb::TemplateInfo {
                name: "bench".into(),
                version: "1".into(),
                backend: "test".into(),
                labels: vec!["bench".into()],
                max_vcpus: 64,
                max_memory_mib: 256 * 1024,
                os: "Linux".into(),
                arch: "X64".into(),
            }],
            backend: "test".into(),
            version: format!(
                "{} (bench fleet simulated agent)",
                env!("CARGO_PKG_VERSION")
            ),
        };
        let runners = SimRunners::new(
            shared.max_runners,
            shared.delays,
            Arc::clone(&shared.counters.live_runners),
        );
        SimAgent {
            id,
            registration,
            shared,
            link,
            credential: None,
            runners,
        }
    }

    /// Keeps the agent linked until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let mut synced = false;
            let result = self.session(&stop, &mut synced).await;
            if stop.is_cancelled() {
                return;
            }
            if synced {
                backoff = INITIAL_BACKOFF;
            }
            if let Err(error) = &result {
                self.shared.counters.failed(error);
                if let SessionError::Status(status) = error {
                    if status.code() == tonic::Code::Unauthenticated && self.credential.is_some() {
                        // The server lost its records: enroll again, as the real agent does.
                        self.credential = None;
                    }
                }
            }
            self.pause(with_jitter(backoff), &stop).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits out a backoff; runners keep booting and going meanwhile (their reports are in
    /// the next session's first snapshot).
    async fn pause(&mut self, wait: Duration, stop: &CancellationToken) {
        let until = tokio::time::sleep(wait);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut until => return,
                (id, step) = self.runners.next_due(), if self.runners.has_due() => {
                    let _ = self.runners.advance(&id, step);
                }
            }
        }
    }

    async fn session(
        &mut self,
        stop: &CancellationToken,
        synced: &mut bool,
    ) -> Result<(), SessionError> {
        let shared = Arc::clone(&self.shared);
        let counters = &shared.counters;
        let channel = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            channel = self.link.channel() => channel?,
        };
        let presented = self
            .credential
            .as_deref()
            .unwrap_or(&shared.enrollment_token);
        let registered = tokio::time::timeout(
            CALL_TIMEOUT,
            client(channel.clone(), presented)?.register_agent(self.registration.clone()),
        )
        .await
        .map_err(|_| SessionError::Timeout)??
        .into_inner();
        if !registered.credential.is_empty() {
            self.credential = Some(registered.credential.clone());
        }
        let own = self.credential.clone().ok_or(SessionError::NoCredential)?;
        let snapshot_every =
            Duration::from_millis(registered.snapshot_interval_ms.clamp(100, 600_000));
        let silence = from_server(
            registered.heartbeat_timeout_ms,
            SERVER_SILENCE,
            SERVER_SILENCE,
        );
        let heartbeat_every =
            from_server(registered.heartbeat_interval_ms, silence / 3, silence / 2);
        counters
            .snapshot_interval_ms
            .store(registered.snapshot_interval_ms, Ordering::Relaxed);
        counters
            .heartbeat_interval_ms
            .store(registered.heartbeat_interval_ms, Ordering::Relaxed);

        let (outbound, outbound_rx) = mpsc::channel::<pb::AgentMessage>(1024);
        let hello = message(pb::agent_message::Message::Hello(pb::Hello {
            agent_id: self.id.to_string(),
        }));
        let _ = outbound.send(hello).await;
        let _ = outbound.send(self.snapshot()).await;
        let mut inbound = tokio::time::timeout(
            CALL_TIMEOUT,
            client(channel, &own)?.sync(ReceiverStream::new(outbound_rx)),
        )
        .await
        .map_err(|_| SessionError::Timeout)??
        .into_inner();
        *synced = true;
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        counters.linked.fetch_add(1, Ordering::Relaxed);
        let _linked = Linked(counters);

        let mut snapshots = tokio::time::interval(snapshot_every);
        snapshots.tick().await;
        let mut heartbeats = tokio::time::interval(heartbeat_every);
        heartbeats.tick().await;
        let mut heard = Instant::now();
        loop {
            let reports = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(heard + silence) => return Err(SessionError::Silent(silence)),
                received = inbound.message() => {
                    heard = Instant::now();
                    match received? {
                        Some(command) => self.handle(command),
                        None => return Err(SessionError::Closed),
                    }
                }
                (id, step) = self.runners.next_due(), if self.runners.has_due() => {
                    self.runners
                        .advance(&id, step)
                        .into_iter()
                        .map(|s| message(pb::agent_message::Message::RunnerUpdate(s)))
                        .collect()
                }
                _ = snapshots.tick() => vec![self.snapshot()],
                _ = heartbeats.tick() => vec![message(pb::agent_message::Message::Heartbeat(pb::Heartbeat {
                    sent_at_unix_us: unix_micros(),
                }))],
            };
            for report in reports {
                if outbound.send(report).await.is_err() {
                    return Err(SessionError::Closed);
                }
            }
        }
    }

    /// A server message; returns what to send back.
    fn handle(&mut self, command: pb::ServerMessage) -> Vec<pb::AgentMessage> {
        use pb::server_message::Message;
        let counters = &self.shared.counters;
        let updates = match command.message {
            Some(Message::CreateRunner(create)) => {
                counters.creates.fetch_add(1, Ordering::Relaxed);
                self.runners.create(&create)
            }
            Some(Message::DeleteRunner(delete)) => {
                counters.deletes.fetch_add(1, Ordering::Relaxed);
                self.runners.delete(&delete.runner_id)
            }
            Some(Message::GuestRequest(request)) => {
                return vec![message(pb::agent_message::Message::GuestReply(
                    pb::GuestReply {
                        request_id: request.request_id,
                        reply: Some(pb::guest_reply::Reply::Error(
                            "a simulated agent (shoes-vz bench fleet) has no guest".into(),
                        )),
                    },
                ))]
            }
            Some(Message::Heartbeat(_)) | None => return Vec::new(),
        };
        updates
            .into_iter()
            .map(|s| message(pb::agent_message::Message::RunnerUpdate(s)))
            .collect()
    }

    fn snapshot(&self) -> pb::AgentMessage {
        message(pb::agent_message::Message::Snapshot(pb::Snapshot {
            runners: self.runners.snapshot(),
        }))
    }
}

fn message(message: pb::agent_message::Message) -> pb::AgentMessage {
    pb::AgentMessage {
        message: Some(message),
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// ±25 % jitter so the fleet does not reconnect in lockstep after a server restart.
fn with_jitter(base: Duration) -> Duration {
    base.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

/// The server's value clamped to [100 ms, `ceiling`], or `fallback` when it sent none (as
/// crates/agent/src/sync.rs).
fn from_server(ms: u64, fallback: Duration, ceiling: Duration) -> Duration {
    if ms == 0 {
        return fallback.min(ceiling);
    }
    Duration::from_millis(ms)
        .clamp(Duration::from_millis(100), Duration::from_secs(600))
        .min(ceiling)
}

/// The endpoint options of the real agent's connection (crates/agent/src/sync.rs `connect`).
pub fn agent_endpoint(server_url: &str) -> Result<Endpoint, tonic::transport::Error> {
    let ping = SERVER_SILENCE / 2;
    Ok(Endpoint::from_shared(server_url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(20)))
        .http2_keep_alive_interval(ping)
        .keep_alive_timeout(ping)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_and_server_intervals_follow_the_real_agent() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
        }
        let ceiling = Duration::from_secs(10);
        assert_eq!(from_server(0, ceiling, ceiling), ceiling);
        assert_eq!(from_server(3_000, ceiling, ceiling), Duration::from_secs(3));
        assert_eq!(from_server(60_000, ceiling, ceiling), ceiling);
    }
}
