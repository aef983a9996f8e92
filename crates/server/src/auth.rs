//! Bearer-token check for every gRPC call.

use std::sync::Arc;
use tonic::{Request, Status};

/// A tonic interceptor accepting `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerAuth {
    token: Arc<str>,
}

impl BearerAuth {
    pub fn new(token: &str) -> Self {
        Self {
            token: Arc::from(token),
        }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), self.token.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "the bearer token is wrong: use the server's auth token (SHOESVZ_TOKEN)",
            )),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata: set SHOESVZ_TOKEN",
            )),
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii header"));
        }
        request
    }

    #[test]
    fn accepts_only_the_exact_token() {
        let auth = BearerAuth::new("secret-token-0123");
        assert!(auth
            .check(request_with(Some("Bearer secret-token-0123")))
            .is_ok());
        for bad in [
            None,
            Some("Bearer secret-token-012"),
            Some("secret-token-0123"),
            Some("Bearer "),
        ] {
            let status = auth.check(request_with(bad)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("secret-token-0123"));
        }
    }
}
