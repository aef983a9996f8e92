//! Request sizes, and the answer to requests that can never succeed.
//!
//! myshoes retries every code but InvalidArgument, forever (myshoes-behaviour.md), so what can
//! never succeed must be InvalidArgument: tonic answers a message over its decode limit with
//! OUT_OF_RANGE and an undecodable one with INTERNAL, both of which myshoes would retry. The
//! decode limit is set well above the handlers' own limits (so a 2 or 10 MB setup script gets
//! the handler's clear message), and [`InvalidRequestLayer`] turns tonic's decode failures
//! into InvalidArgument.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::{Code, Status};

/// Largest request message decoded at all; the handlers refuse far smaller ones (a setup
/// script above 1 MiB) with their own message.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Turns tonic's answers to undecodable requests (too large, malformed) into InvalidArgument.
#[derive(Debug, Clone, Copy, Default)]
pub struct InvalidRequestLayer;

impl<S> tower_layer::Layer<S> for InvalidRequestLayer {
    type Service = InvalidRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InvalidRequest { inner }
    }
}

#[derive(Debug, Clone)]
pub struct InvalidRequest<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for InvalidRequest<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

/// A unary call that failed before its handler ran answers with the status in its headers
/// (trailers-only); rewrite it there when it is one of tonic's decode failures.
fn rewrite(headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if let Some(replacement) = invalid_request(&status) {
        let _ = replacement.add_header(headers);
    }
}

/// InvalidArgument for tonic's decode failures; `None` for anything else.
pub fn invalid_request(status: &Status) -> Option<Status> {
    let message = status.message();
    let undecodable = matches!(status.code(), Code::Internal | Code::OutOfRange)
        && [
            "Error, decoded message length too large",
            "failed to decode Protobuf message",
            "protocol error:",
            "Unexpected EOF decoding stream",
        ]
        .iter()
        .any(|phrase| message.starts_with(phrase));
    undecodable.then(|| {
        Status::invalid_argument(format!(
            "the request cannot be decoded ({message}); it is refused for good"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_failures_become_invalid_argument_and_nothing_else_does() {
        for (code, message) in [
            (
                Code::OutOfRange,
                "Error, decoded message length too large: found 104857600 bytes, the limit is: 16777216 bytes",
            ),
            (Code::Internal, "failed to decode Protobuf message: invalid wire type"),
        ] {
            let mapped = invalid_request(&Status::new(code, message)).expect("mapped");
            assert_eq!(mapped.code(), Code::InvalidArgument);
        }
        for status in [
            Status::internal("the store is on fire"),
            Status::out_of_range("something else"),
            Status::unavailable("failed to decode Protobuf message"),
        ] {
            assert!(invalid_request(&status).is_none(), "{status:?}");
        }
        let mut headers = http::HeaderMap::new();
        Status::out_of_range("Error, decoded message length too large: found 1 bytes")
            .add_header(&mut headers)
            .expect("headers");
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).expect("status");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
