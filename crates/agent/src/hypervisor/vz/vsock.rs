//! HTTP/1.1 to a guest's runner-agent over a stream the backend opened: for vz, a vsock
//! connection (`VZVirtioSocketDevice connectToPort:`, port
//! [`shoes_vz_guest_config::VSOCK_PORT`]) whose descriptor the FFI hands over. Only the host
//! can open one, so what goes through it (a restored guest's new token and SSH host key)
//! never reaches the NAT segment that every guest shares (tart#20).
//!
//! Plain Rust over any `AsyncRead + AsyncWrite` stream: tested here over Unix sockets; the
//! vsock descriptor itself exists only on a Mac.

use crate::guest_api::{ChannelError, ChannelRequest, ChannelResponse};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connected socket descriptor (vsock, or any stream socket) as a tokio stream. The
/// descriptor is only read and written, so tokio's Unix stream type carries it.
pub fn stream_from_fd(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// Sends `request` over `stream` (one request per connection) and reads the whole answer.
pub async fn send<S>(
    stream: S,
    request: ChannelRequest,
    timeout: Duration,
) -> Result<ChannelResponse, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(timeout, exchange(stream, request))
        .await
        .map_err(|_| ChannelError::Timeout(timeout))?
}

async fn exchange<S>(stream: S, request: ChannelRequest) -> Result<ChannelResponse, ChannelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| ChannelError::Http(Box::new(e));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Owned by this call: ends with the connection, aborted if the call is dropped.
    let driver = tokio::spawn(connection);
    let _abort = AbortOnDrop(&driver);
    let mut bearer = String::from("Bearer ");
    bearer.push_str(request.token.expose());
    let outgoing = hyper::Request::builder()
        .method(request.method)
        .uri(request.path)
        // The runner-agent checks only the token; a Host header is required by HTTP/1.1.
        .header(hyper::header::HOST, "guest.vsock")
        .header(hyper::header::AUTHORIZATION, bearer)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(request.body)))
        .map_err(|e| ChannelError::Http(Box::new(e)))?;
    let response = sender.send_request(outgoing).await.map_err(http)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes()
        .to_vec();
    Ok(ChannelResponse { status, body })
}

struct AbortOnDrop<'a, T>(&'a tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use shoes_vz_guest_config::ApiToken;

    fn token() -> ApiToken {
        ApiToken::new("a".repeat(43)).expect("token")
    }

    #[tokio::test]
    async fn a_request_and_its_answer_cross_a_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("guest.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let router = axum::Router::new().route(
            "/refresh",
            post(|headers: axum::http::HeaderMap, body: String| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                axum::Json(serde_json::json!({"auth": auth, "body": body}))
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, router).await });

        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        // Through the same conversion the vz backend uses for the vsock descriptor.
        let stream =
            stream_from_fd(OwnedFd::from(stream.into_std().expect("std"))).expect("tokio stream");
        let response = send(
            stream,
            ChannelRequest {
                method: reqwest::Method::POST,
                path: "/refresh",
                token: token(),
                body: br#"{"config":{}}"#.to_vec(),
            },
            Duration::from_secs(10),
        )
        .await
        .expect("answered");
        assert_eq!(response.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&response.body).expect("json");
        assert_eq!(json["auth"], format!("Bearer {}", "a".repeat(43)));
        assert_eq!(json["body"], r#"{"config":{}}"#);
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_guest_times_out() {
        let (client, _server_end) = tokio::net::UnixStream::pair().expect("pair");
        let error = send(
            client,
            ChannelRequest {
                method: reqwest::Method::GET,
                path: "/status",
                token: token(),
                body: Vec::new(),
            },
            Duration::from_millis(200),
        )
        .await
        .expect_err("no answer");
        assert!(matches!(error, ChannelError::Timeout(_)), "{error}");
    }
}
