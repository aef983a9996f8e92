//! Client for a guest's runner-agent HTTP API (`/status`, `/exec`, `/refresh`), authenticated
//! with the runner's token. Every call has a timeout.
//!
//! Two transports: HTTP to the guest's address, or a backend's private [`GuestChannel`] (vz:
//! vsock, which only the host reaches), through which secrets never cross a network.

use shoes_vz_guest_config::{ApiToken, GuestConfig};
use shoes_vz_runner_agent::{
    ExecRequest, ExecResponse, RefreshReport, RefreshRequest, SetupLogChunk, SetupLogRequest,
    SetupRequest, SetupStarted, StatusResponse,
};
use std::net::SocketAddr;
use std::time::Duration;

/// One request to the guest's runner-agent over a backend's private channel.
pub struct ChannelRequest {
    pub method: reqwest::Method,
    pub path: &'static str,
    /// Sent as `Authorization: Bearer …`; never logged.
    pub token: ApiToken,
    /// JSON, or empty.
    pub body: Vec<u8>,
}

/// The runner-agent's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot open the backend's channel to the guest")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP over the guest channel failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the guest channel did not answer within {0:?}")]
    Timeout(Duration),
}

/// A backend's private channel to one guest's runner-agent (see
/// [`crate::hypervisor::Hypervisor::guest_channel`]).
#[async_trait::async_trait]
pub trait GuestChannel: Send + Sync {
    /// Sends one request and reads the whole answer, within `timeout`.
    async fn send(
        &self,
        request: ChannelRequest,
        timeout: Duration,
    ) -> Result<ChannelResponse, ChannelError>;
}

#[derive(Debug, thiserror::Error)]
pub enum GuestApiError {
    #[error("cannot reach the runner-agent at {addr}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    #[error("the runner-agent at {addr} answered {status} to {path}")]
    Status {
        addr: SocketAddr,
        path: &'static str,
        status: u16,
    },
    #[error("cannot reach the runner-agent over the backend's channel")]
    Channel(#[source] ChannelError),
    #[error("the runner-agent answered {status} to {path} over the backend's channel")]
    ChannelStatus { path: &'static str, status: u16 },
    #[error("the runner-agent's answer to {path} is not the JSON expected")]
    Body {
        path: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl GuestApiError {
    /// The runner-agent refused the request as malformed (400), e.g. a field it predates.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            GuestApiError::Status { status: 400, .. }
                | GuestApiError::ChannelStatus { status: 400, .. }
        )
    }
}

#[derive(Clone)]
pub struct GuestApi {
    transport: Transport,
    token: ApiToken,
}

#[derive(Clone)]
enum Transport {
    Http {
        client: reqwest::Client,
        addr: SocketAddr,
    },
    Channel(std::sync::Arc<dyn GuestChannel>),
}

/// One HTTP client for every guest: building one loads TLS roots, which is costly per runner.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
}

impl GuestApi {
    pub fn new(client: reqwest::Client, addr: SocketAddr, token: ApiToken) -> GuestApi {
        GuestApi {
            transport: Transport::Http { client, addr },
            token,
        }
    }

    /// The API over a backend's private channel (vz: vsock) instead of the network.
    pub fn over_channel(channel: std::sync::Arc<dyn GuestChannel>, token: ApiToken) -> GuestApi {
        GuestApi {
            transport: Transport::Channel(channel),
            token,
        }
    }

    /// The guest's API address, when it is reached over the network.
    pub fn addr(&self) -> Option<SocketAddr> {
        match &self.transport {
            Transport::Http { addr, .. } => Some(*addr),
            Transport::Channel(_) => None,
        }
    }

    pub async fn status(&self) -> Result<StatusResponse, GuestApiError> {
        self.call(
            reqwest::Method::GET,
            "/status",
            None::<&()>,
            Duration::from_secs(5),
        )
        .await
    }

    /// Runs a script fed on stdin (never argv) with the guest's own timeout plus a margin.
    pub async fn exec(
        &self,
        request: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecResponse, GuestApiError> {
        self.call(
            reqwest::Method::POST,
            "/exec",
            Some(request),
            timeout + Duration::from_secs(5),
        )
        .await
    }

    /// Starts the setup script detached in the guest; repeating it for the same runner starts
    /// nothing new (so a retry after a lost answer is safe).
    pub async fn start_setup(&self, request: &SetupRequest) -> Result<SetupStarted, GuestApiError> {
        self.call(
            reqwest::Method::POST,
            "/setup",
            Some(request),
            Duration::from_secs(30),
        )
        .await
    }

    /// Up to `max` bytes of the setup script's log from `offset` (its end without one), and
    /// the position where the next read continues.
    pub async fn setup_log(
        &self,
        offset: Option<u64>,
        max: u64,
    ) -> Result<(Vec<u8>, u64), GuestApiError> {
        let request = SetupLogRequest {
            offset,
            max_bytes: Some(max),
        };
        let chunk: SetupLogChunk = self
            .call(
                reqwest::Method::POST,
                "/setup/log",
                Some(&request),
                Duration::from_secs(30),
            )
            .await?;
        Ok((chunk.text.into_bytes(), chunk.next_offset))
    }

    /// Hands the guest a new identity (after a warm restore); the current token authorizes it.
    /// With `reply_notice` the guest answers with its signed notice instead of notifying
    /// (older runner-agents refuse that: [`GuestApiError::is_bad_request`]).
    pub async fn refresh(
        &self,
        config: GuestConfig,
        reply_notice: bool,
    ) -> Result<RefreshReport, GuestApiError> {
        let request = RefreshRequest {
            config: Some(config),
            config_device: None,
            reply_notice,
        };
        self.call(
            reqwest::Method::POST,
            "/refresh",
            Some(&request),
            Duration::from_secs(30),
        )
        .await
    }

    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &'static str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, GuestApiError> {
        let (client, addr) = match &self.transport {
            Transport::Http { client, addr } => (client, *addr),
            Transport::Channel(channel) => {
                let body = match body {
                    Some(body) => serde_json::to_vec(body)
                        .map_err(|source| GuestApiError::Body { path, source })?,
                    None => Vec::new(),
                };
                let request = ChannelRequest {
                    method,
                    path,
                    token: self.token.clone(),
                    body,
                };
                let response = channel
                    .send(request, timeout)
                    .await
                    .map_err(GuestApiError::Channel)?;
                if !(200..300).contains(&response.status) {
                    return Err(GuestApiError::ChannelStatus {
                        path,
                        status: response.status,
                    });
                }
                return serde_json::from_slice(&response.body)
                    .map_err(|source| GuestApiError::Body { path, source });
            }
        };
        let mut request = client
            .request(method, format!("http://{addr}{path}"))
            .bearer_auth(self.token.expose())
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| GuestApiError::Transport { addr, source })?;
        let status = response.status();
        if !status.is_success() {
            return Err(GuestApiError::Status {
                addr,
                path,
                status: status.as_u16(),
            });
        }
        response
            .json()
            .await
            .map_err(|source| GuestApiError::Transport { addr, source })
    }
}
