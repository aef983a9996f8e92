//! The Prometheus `/metrics` endpoint.

use crate::exposition::ExpositionFormat;
use crate::fleet::Fleet;
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub async fn serve_metrics(
    addr: SocketAddr,
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for /metrics; change metrics_listen"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(fleet);
    tasks.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// Answers in the format the scraper's `Accept` header prefers (see [`ExpositionFormat`]),
/// labelled with that format's own `Content-Type`.
async fn render(State(fleet): State<Arc<Fleet>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = ExpositionFormat::negotiate(accept);
    let body = fleet.metrics().render_as(&fleet.gauges(), format);
    ([(header::CONTENT_TYPE, format.content_type())], body)
}
