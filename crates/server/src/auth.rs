//! Bearer tokens: myshoes' token for ShoesService, the operator token for OperatorService
//! (checked here, in interceptors), and agents' own credentials (checked by the fleet, which
//! knows each agent's). Every refusal is logged with the peer's address and counted.

use crate::credentials::same_secret;
use crate::metrics::Metrics;
use std::sync::Arc;
use tonic::{Request, Status};

/// The bearer token a request carries, if any.
pub fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// The peer's address for logs ("unknown" when the transport does not say).
pub fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |addr| addr.to_string())
}

/// A tonic interceptor accepting `authorization: Bearer <token>` for one service.
#[derive(Clone)]
pub struct BearerAuth {
    /// `None`: the service is off (no token configured for it).
    token: Option<Arc<str>>,
    service: &'static str,
    /// The variable (or config key) that holds the token, for the error message.
    token_name: &'static str,
    metrics: Arc<Metrics>,
}

impl BearerAuth {
    pub fn new(
        token: Option<&str>,
        service: &'static str,
        token_name: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            token: token.map(Arc::from),
            service,
            token_name,
            metrics,
        }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let refusal = match (&self.token, bearer(&request)) {
            (Some(token), Some(presented)) if same_secret(presented, token) => return Ok(request),
            (None, _) => format!(
                "the {} API is off on this server: set {} in its configuration",
                self.service, self.token_name
            ),
            (Some(_), Some(_)) => format!(
                "the bearer token is wrong for the {} API: use {}",
                self.service, self.token_name
            ),
            (Some(_), None) => format!(
                "missing `authorization: Bearer <token>` metadata: set {}",
                self.token_name
            ),
        };
        self.metrics.count_auth_refused(self.service);
        tracing::warn!(service = self.service, peer = %peer(&request), "refused a request: {refusal}");
        Err(Status::unauthenticated(refusal))
    }
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
    fn accepts_only_the_exact_token_and_counts_refusals() {
        let metrics = Arc::new(Metrics::default());
        let auth = BearerAuth::new(
            Some("secret-token-0123"),
            "shoes",
            "SHOESVZ_TOKEN",
            Arc::clone(&metrics),
        );
        assert!(auth
            .check(request_with(Some("Bearer secret-token-0123")))
            .is_ok());
        let bad = [
            None,
            Some("Bearer secret-token-012"),
            Some("secret-token-0123"),
            Some("Bearer "),
        ];
        for header in bad {
            let status = auth.check(request_with(header)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("secret-token-0123"));
        }
        let off = BearerAuth::new(
            None,
            "operator",
            "SHOESVZ_OPERATOR_TOKEN",
            Arc::clone(&metrics),
        );
        let status = off
            .check(request_with(Some("Bearer secret-token-0123")))
            .expect_err("no token configured");
        assert!(status.message().contains("SHOESVZ_OPERATOR_TOKEN"));
        let text = metrics.render(&Default::default());
        assert!(
            text.contains("shoesvz_auth_refused_total{service=\"shoes\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("shoesvz_auth_refused_total{service=\"operator\"} 1"),
            "{text}"
        );
    }
}
