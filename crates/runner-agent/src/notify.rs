//! Telling the host "this runner's guest is up": a signed notify, retried with exponential
//! backoff and jitter until the host accepts it (2xx). Each attempt is signed afresh (new
//! timestamp and nonce) and re-reads the addresses, which may appear late while DHCP runs.

use std::time::{Duration, Instant};

use rand::Rng;
use shoes_vz_guest_config::{
    sign, ApiToken, NotifyError, NotifyRequest, SignedNotify, SIGNATURE_HEADER,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::addrs;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of a refusal's body is logged.
const LOGGED_BODY_BYTES: usize = 300;

#[derive(Debug, Clone, Copy)]
pub struct NotifyOptions {
    /// Bound on one attempt (connect, send, answer).
    pub attempt_timeout: Duration,
    pub initial_backoff: Duration,
    /// Backoff stops growing here; attempts go on.
    pub max_backoff: Duration,
    /// Stop trying after this long; `None` tries until accepted or cancelled.
    pub give_up_after: Option<Duration>,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            attempt_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

/// Who to notify, as whom.
#[derive(Debug, Clone)]
pub struct NotifyTarget {
    pub runner_id: String,
    pub token: ApiToken,
    pub url: String,
    /// The runner-agent's HTTP port, reported to the host.
    pub http_port: u16,
}

#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub attempts: u32,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyFailure {
    #[error("notifying the host was cancelled")]
    Cancelled,
    #[error("the host did not accept the notify after {attempts} attempts over {elapsed:?}; last problem: {last}")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    #[error("could not sign the notify")]
    Sign(#[source] NotifyError),
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The backoff before attempt `attempt + 1` (0-based), before jitter.
pub fn backoff(attempt: u32, opts: &NotifyOptions) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(30));
    opts.initial_backoff
        .saturating_mul(factor)
        .min(opts.max_backoff)
}

/// "Equal jitter": half the backoff fixed, half random (`unit` in `[0, 1)`), so guests that
/// booted together spread out yet never retry at once.
pub fn jittered(base: Duration, unit: f64) -> Duration {
    let half = base / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A client for notifies: no proxies (the host is on the guest's own network), bounded
/// connects.
pub fn client() -> Result<reqwest::Client, NotifyFailure> {
    let builder = || {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
    };
    match builder().build() {
        Ok(client) => Ok(client),
        // Minimal guests (the busybox test guest) ship no CA bundle. The notify is plain HTTP
        // on the host-only network and carries its own HMAC, so go on without TLS roots.
        Err(error) => {
            tracing::warn!(error = %error, "no system CA certificates; an https notify URL cannot be verified");
            builder()
                .tls_certs_only(Vec::new())
                .build()
                .map_err(NotifyFailure::Client)
        }
    }
}

/// Notifies until the host answers 2xx, the deadline passes or `cancel` fires.
pub async fn notify_until_accepted(
    client: &reqwest::Client,
    target: &NotifyTarget,
    opts: &NotifyOptions,
    cancel: &CancellationToken,
) -> Result<Accepted, NotifyFailure> {
    let started = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let last = tokio::select! {
            () = cancel.cancelled() => return Err(NotifyFailure::Cancelled),
            outcome = attempt_once(client, target, opts) => match outcome {
                Ok(()) => {
                    let accepted = Accepted { attempts: attempt, elapsed: started.elapsed() };
                    info!(runner_id = %target.runner_id, attempts = accepted.attempts, elapsed_ms = accepted.elapsed.as_millis(), "the host accepted the notify");
                    return Ok(accepted);
                }
                Err(AttemptError::Sign(err)) => return Err(NotifyFailure::Sign(err)),
                Err(AttemptError::Refused(problem)) => problem,
            },
        };
        let delay = jittered(backoff(attempt - 1, opts), rand::rng().random::<f64>());
        if let Some(limit) = opts.give_up_after {
            if started.elapsed() + delay > limit {
                return Err(NotifyFailure::GaveUp {
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    last,
                });
            }
        }
        warn!(runner_id = %target.runner_id, attempt, retry_in_ms = delay.as_millis(), problem = %last, "notify not accepted yet");
        tokio::select! {
            () = cancel.cancelled() => return Err(NotifyFailure::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

enum AttemptError {
    Sign(NotifyError),
    Refused(String),
}

/// The notice a notify carries, signed afresh with the runner's token: what `/refresh`
/// answers with when the host asks for it there (see [`crate::RefreshRequest`]).
pub fn signed_notice(target: &NotifyTarget) -> Result<SignedNotify, NotifyError> {
    let request = NotifyRequest::new(
        target.runner_id.clone(),
        addrs::discover(),
        target.http_port,
        VERSION.to_owned(),
    )?;
    sign(&request, &target.token)
}

async fn attempt_once(
    client: &reqwest::Client,
    target: &NotifyTarget,
    opts: &NotifyOptions,
) -> Result<(), AttemptError> {
    let signed = signed_notice(target).map_err(AttemptError::Sign)?;
    let response = client
        .post(&target.url)
        .timeout(opts.attempt_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signed.signature)
        .body(signed.body)
        .send()
        .await
        .map_err(|err| AttemptError::Refused(describe(&err)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = tokio::time::timeout(opts.attempt_timeout, response.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut end = body.len().min(LOGGED_BODY_BYTES);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    Err(AttemptError::Refused(format!(
        "the host answered {status}: {}",
        body[..end].trim()
    )))
}

/// reqwest's error with its causes (the top level alone says little).
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let opts = NotifyOptions {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            ..NotifyOptions::default()
        };
        let steps: Vec<u128> = (0..9).map(|i| backoff(i, &opts).as_millis()).collect();
        assert_eq!(
            steps,
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        assert_eq!(backoff(u32::MAX, &opts), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let base = Duration::from_secs(4);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(2));
        assert_eq!(jittered(base, 0.5), Duration::from_secs(3));
        assert!(jittered(base, 0.999_999) <= base);
        assert_eq!(jittered(base, 7.0), base);
    }
}
