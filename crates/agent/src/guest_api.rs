//! Client for a guest's runner-agent HTTP API (`/status`, `/exec`, `/refresh`), authenticated
//! with the runner's token. Every call has a timeout.

use shoes_vz_guest_config::{ApiToken, GuestConfig};
use shoes_vz_runner_agent::{
    ExecRequest, ExecResponse, RefreshRequest, SetupRequest, SetupStarted, StatusResponse,
};
use std::net::SocketAddr;
use std::time::Duration;

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
}

#[derive(Clone)]
pub struct GuestApi {
    client: reqwest::Client,
    addr: SocketAddr,
    token: ApiToken,
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
            client,
            addr,
            token,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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

    /// Hands the guest a new identity (after a warm restore); the current token authorizes it.
    pub async fn refresh(&self, config: GuestConfig) -> Result<(), GuestApiError> {
        let request = RefreshRequest {
            config: Some(config),
            config_device: None,
        };
        let _: serde_json::Value = self
            .call(
                reqwest::Method::POST,
                "/refresh",
                Some(&request),
                Duration::from_secs(30),
            )
            .await?;
        Ok(())
    }

    async fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &'static str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, GuestApiError> {
        let addr = self.addr;
        let mut request = self
            .client
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
