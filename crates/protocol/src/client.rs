//! Connecting to a shoes-vz server as myshoes' plugin, an operator or a test does: bearer
//! token on every call, TLS when a CA is given.

use crate::operator::v1::operator_service_client::OperatorServiceClient;
use crate::shoes::v1::shoes_service_client::ShoesServiceClient;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type ShoesClient = ShoesServiceClient<InterceptedService<Channel, BearerToken>>;
pub type OperatorClient = OperatorServiceClient<InterceptedService<Channel, BearerToken>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "server address {0:?} is not valid: use host:port, http://host:port or https://host:port"
    )]
    BadAddress(String),
    #[error(
        "the token contains characters that cannot go in a header; use a printable ASCII token"
    )]
    BadToken,
    #[error("invalid TLS settings")]
    Tls(#[source] tonic::transport::Error),
    #[error("cannot connect to the shoes-vz server at {addr}; check SHOESVZ_SERVER_ADDR and that the server runs")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Options for [`connect_shoes`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PEM CA certificate; implies TLS.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Option<Duration>,
}

/// `host:port` becomes `http://host:port` (or `https://` with a CA).
pub fn normalize_address(addr: &str, tls: bool) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

pub fn bearer(token: &str) -> Result<BearerToken, ClientError> {
    format!("Bearer {token}")
        .parse()
        .map(BearerToken)
        .map_err(|_| ClientError::BadToken)
}

pub fn endpoint(addr: &str, options: &ConnectOptions) -> Result<Endpoint, ClientError> {
    let url = normalize_address(addr, options.tls_ca_pem.is_some());
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| ClientError::BadAddress(addr.to_string()))?
        .connect_timeout(options.connect_timeout.unwrap_or(Duration::from_secs(5)))
        .tcp_nodelay(true);
    if let Some(ca) = &options.tls_ca_pem {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(ClientError::Tls)?;
    }
    Ok(endpoint)
}

async fn channel(addr: &str, options: &ConnectOptions) -> Result<Channel, ClientError> {
    endpoint(addr, options)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// myshoes' API (AddInstance, DeleteInstance) with myshoes' token.
pub async fn connect_shoes(
    addr: &str,
    token: &str,
    options: &ConnectOptions,
) -> Result<ShoesClient, ClientError> {
    let interceptor = bearer(token)?;
    let channel = channel(addr, options).await?;
    Ok(ShoesServiceClient::with_interceptor(channel, interceptor))
}

/// The operators' API with the operator token.
pub async fn connect_operator(
    addr: &str,
    token: &str,
    options: &ConnectOptions,
) -> Result<OperatorClient, ClientError> {
    let interceptor = bearer(token)?;
    let channel = channel(addr, options).await?;
    Ok(
        OperatorServiceClient::with_interceptor(channel, interceptor)
            // Pages are bounded; a runner with a long history and logs may still be large.
            .max_decoding_message_size(16 * 1024 * 1024),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            normalize_address("127.0.0.1:50051", false),
            "http://127.0.0.1:50051"
        );
        assert_eq!(normalize_address("host:1", true), "https://host:1");
        assert_eq!(normalize_address("https://host:1", false), "https://host:1");
    }

    #[test]
    fn tokens_with_newlines_are_refused() {
        assert!(bearer("good-token").is_ok());
        assert!(matches!(bearer("bad\ntoken"), Err(ClientError::BadToken)));
    }
}
