//! The host end of the guest → host notify: an HTTP endpoint, listening only where guests reach
//! it, that accepts a signed notice for exactly the runner whose token signed it (replay-safe)
//! and wakes that runner's lifecycle. This is how the agent learns a guest's address.

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use shoes_vz_guest_config::{
    ApiToken, NotifyError, NotifyVerifier, DEFAULT_WINDOW, MAX_NOTIFY_BODY_BYTES, SIGNATURE_HEADER,
};
use shoes_vz_model::RunnerId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The path guests POST to.
pub const NOTIFY_PATH: &str = "/v1/notify";

/// What a verified notice told the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNotice {
    pub addresses: Vec<String>,
    /// The runner-agent's HTTP port inside the guest.
    pub http_port: u16,
    pub version: String,
    pub received_at: Instant,
}

/// Verifier plus one waiter per registered runner.
#[derive(Default)]
pub struct NotifyHub {
    verifier: Mutex<Option<NotifyVerifier>>,
    waiters: Mutex<HashMap<String, watch::Sender<Option<GuestNotice>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl NotifyHub {
    /// Expects a notice from `runner_id` signed with `token`; the receiver sees it arrive.
    /// Registering again (a warm restore's refresh) replaces the token and resets the waiter.
    pub fn register(
        &self,
        runner_id: &RunnerId,
        token: ApiToken,
    ) -> watch::Receiver<Option<GuestNotice>> {
        lock(&self.verifier)
            .get_or_insert_with(|| NotifyVerifier::new(DEFAULT_WINDOW))
            .register(runner_id.as_str(), token);
        let (sender, receiver) = watch::channel(None);
        lock(&self.waiters).insert(runner_id.to_string(), sender);
        receiver
    }

    pub fn unregister(&self, runner_id: &RunnerId) {
        if let Some(verifier) = lock(&self.verifier).as_mut() {
            verifier.unregister(runner_id.as_str());
        }
        lock(&self.waiters).remove(runner_id.as_str());
    }

    /// Verifies a notice and hands it to its runner's waiter.
    pub fn accept(&self, body: &[u8], signature: Option<&str>) -> Result<String, NotifyError> {
        let request = {
            let mut verifier = lock(&self.verifier);
            let verifier = verifier.get_or_insert_with(|| NotifyVerifier::new(DEFAULT_WINDOW));
            verifier.verify(body, signature)?
        };
        let notice = GuestNotice {
            addresses: request.addresses,
            http_port: request.http_port,
            version: request.version,
            received_at: Instant::now(),
        };
        if let Some(waiter) = lock(&self.waiters).get(&request.runner_id) {
            waiter.send_replace(Some(notice));
        }
        Ok(request.runner_id)
    }
}

/// Serves [`NOTIFY_PATH`] on `listen` until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    hub: Arc<NotifyHub>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} for guest notifies; change notify.listen")
        })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(NOTIFY_PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_NOTIFY_BODY_BYTES))
        .with_state(hub);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "notify endpoint stopped");
        }
    });
    Ok((bound, task))
}

async fn receive(
    State(hub): State<Arc<NotifyHub>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    match hub.accept(&body, signature) {
        Ok(runner_id) => {
            tracing::info!(runner = %runner_id, "guest notify accepted");
            (StatusCode::OK, "accepted\n")
        }
        Err(error) => {
            // Logged for the operator; the guest learns only the status code.
            tracing::warn!(error = %error, "guest notify refused");
            let status =
                StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            (status, "refused\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoes_vz_guest_config::{sign, NotifyRequest};

    fn signed(runner: &RunnerId, token: &ApiToken) -> (Vec<u8>, String) {
        let request = NotifyRequest::new(
            runner.to_string(),
            vec!["10.0.2.15".into()],
            8080,
            "test".into(),
        )
        .expect("request");
        let signed = sign(&request, token).expect("sign");
        (signed.body, signed.signature)
    }

    #[tokio::test]
    async fn only_the_runner_whose_token_signed_it_is_woken_and_replays_are_refused() {
        let hub = Arc::new(NotifyHub::default());
        let (a, b) = (RunnerId::generate(), RunnerId::generate());
        let token_a = ApiToken::generate().expect("token");
        let token_b = ApiToken::generate().expect("token");
        let mut waiter_a = hub.register(&a, token_a.clone());
        let waiter_b = hub.register(&b, token_b.clone());

        // Runner b's token cannot speak for runner a.
        let (body, _) = signed(&a, &token_a);
        let (_, wrong_signature) = signed(&a, &token_b);
        let error = hub
            .accept(&body, Some(&wrong_signature))
            .expect_err("wrong token");
        assert_eq!(error.http_status(), 401);
        assert!(waiter_a.borrow().is_none());

        let (body, signature) = signed(&a, &token_a);
        assert_eq!(
            hub.accept(&body, Some(&signature)).expect("valid"),
            a.to_string()
        );
        waiter_a.changed().await.expect("woken");
        assert_eq!(waiter_a.borrow().as_ref().map(|n| n.http_port), Some(8080));
        assert!(waiter_b.borrow().is_none(), "another runner was not woken");

        let replay = hub.accept(&body, Some(&signature)).expect_err("replay");
        assert_eq!(replay.http_status(), 401);

        hub.unregister(&a);
        let (body, signature) = signed(&a, &token_a);
        assert!(
            hub.accept(&body, Some(&signature)).is_err(),
            "unregistered runners are unknown"
        );
    }

    #[tokio::test]
    async fn the_endpoint_answers_401_to_forgeries_over_http() {
        let hub = Arc::new(NotifyHub::default());
        let runner = RunnerId::generate();
        let token = ApiToken::generate().expect("token");
        let _waiter = hub.register(&runner, token.clone());
        let stop = CancellationToken::new();
        let (addr, task) = serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Arc::clone(&hub),
            stop.clone(),
        )
        .await
        .expect("serve");
        let client = reqwest::Client::new();
        let url = format!("http://{addr}{NOTIFY_PATH}");
        let (body, signature) = signed(&runner, &ApiToken::generate().expect("token"));
        let forged = client
            .post(&url)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(forged.status().as_u16(), 401);
        let (body, signature) = signed(&runner, &token);
        let good = client
            .post(&url)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(good.status().as_u16(), 200);
        stop.cancel();
        task.await.expect("server task");
    }
}
