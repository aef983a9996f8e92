//! The guest → host notify: "runner X booted, here are its addresses", signed with runner X's
//! API token so the host can match it to exactly that runner, and replay-safe.
//!
//! Wire format: `POST <notify_url>` with `Content-Type: application/json`, the JSON of a
//! [`NotifyRequest`] as the body, and header [`SIGNATURE_HEADER`]`: v1=<hex>` where `<hex>` is
//! HMAC-SHA256, keyed with the token's text, over `"shoes-vz-notify-v1\n"` followed by the
//! body bytes exactly as sent. Signing the bytes (not a re-encoding) leaves nothing to
//! canonicalise; the prefix keeps the MAC from meaning anything in another protocol. The token
//! itself never travels in a notify.
//!
//! The host's [`NotifyVerifier`] knows each runner's token; it accepts a notice only if the
//! runner id is registered, the MAC verifies with *that* runner's token, the timestamp is
//! within the window of the host's clock, and the nonce has not been seen for that runner.
//! A guest signs every attempt afresh (new timestamp and nonce), so retries are not replays.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::{is_valid_name, RUNNER_ID_MAX_LEN};
use crate::secret::ApiToken;

/// The signature header (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "x-shoesvz-signature";
const SIGNATURE_SCHEME: &str = "v1=";
const DOMAIN: &[u8] = b"shoes-vz-notify-v1\n";
pub const MAX_NOTIFY_BODY_BYTES: usize = 16 * 1024;
pub const MAX_ADDRESSES: usize = 32;
const MAX_ADDRESS_LEN: usize = 64;
const MAX_VERSION_LEN: usize = 64;
const NONCE_BYTES: usize = 16;
/// Default tolerance between the guest's and the host's clocks.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Nonces remembered per runner within the window; a runner that sends more is refused
/// until old ones age out (a real guest sends a handful).
pub const MAX_NONCES_PER_RUNNER: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("the notify is malformed: {reason}")]
    Malformed { reason: &'static str },
    #[error("the notify names runner {runner_id}, which this host does not expect")]
    UnknownRunner { runner_id: String },
    #[error("the notify has no {SIGNATURE_HEADER} header")]
    MissingSignature,
    #[error("the notify for runner {runner_id} is not signed with that runner's token")]
    BadSignature { runner_id: String },
    #[error("the notify for runner {runner_id} is {skew_ms} ms away from the host's clock (allowed: {window_ms} ms); check the guest's clock")]
    Stale {
        runner_id: String,
        skew_ms: i128,
        window_ms: u64,
    },
    #[error("the notify for runner {runner_id} repeats a nonce already seen (a replay)")]
    Replay { runner_id: String },
    #[error("runner {runner_id} sent too many notifies; try again later")]
    TooMany { runner_id: String },
    #[error("the operating system's random source failed; cannot make a nonce")]
    Random(#[source] rand::rand_core::OsError),
}

impl NotifyError {
    /// The HTTP status a notify endpoint should answer with. Every authentication failure is
    /// 401 alike, so a prober learns nothing about which check failed.
    pub fn http_status(&self) -> u16 {
        match self {
            NotifyError::Malformed { .. } => 400,
            NotifyError::TooMany { .. } => 429,
            NotifyError::Random(_) => 500,
            NotifyError::UnknownRunner { .. }
            | NotifyError::MissingSignature
            | NotifyError::BadSignature { .. }
            | NotifyError::Stale { .. }
            | NotifyError::Replay { .. } => 401,
        }
    }
}

/// What a guest tells the host once it is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    pub runner_id: String,
    /// The guest's non-loopback IP addresses, IPv4 first.
    pub addresses: Vec<String>,
    /// The port the runner-agent's HTTP API listens on.
    pub http_port: u16,
    /// The runner-agent's version.
    pub version: String,
    /// The guest's clock, Unix ms.
    pub timestamp_ms: u64,
    /// Fresh random hex per attempt.
    pub nonce: String,
}

impl NotifyRequest {
    /// A notice stamped with the current time and a fresh nonce.
    pub fn new(
        runner_id: String,
        addresses: Vec<String>,
        http_port: u16,
        version: String,
    ) -> Result<NotifyRequest, NotifyError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(NotifyError::Random)?;
        Ok(NotifyRequest {
            runner_id,
            addresses,
            http_port,
            version,
            timestamp_ms: unix_ms_now(),
            nonce: hex::encode(nonce),
        })
    }

    pub fn validate(&self) -> Result<(), NotifyError> {
        let malformed = |reason| Err(NotifyError::Malformed { reason });
        if !is_valid_name(&self.runner_id, RUNNER_ID_MAX_LEN) {
            return malformed("runner_id is not a valid runner id");
        }
        if self.addresses.len() > MAX_ADDRESSES {
            return malformed("too many addresses");
        }
        let printable =
            |s: &str, max: usize| s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic());
        if !self.addresses.iter().all(|a| printable(a, MAX_ADDRESS_LEN)) {
            return malformed("an address is too long or not printable");
        }
        if !printable(&self.version, MAX_VERSION_LEN) {
            return malformed("version is too long or not printable");
        }
        let nonce_ok = (2 * NONCE_BYTES..=128).contains(&self.nonce.len())
            && self.nonce.bytes().all(|b| b.is_ascii_hexdigit());
        if !nonce_ok {
            return malformed("nonce must be 32-128 hex digits");
        }
        Ok(())
    }
}

/// A notice ready to send: the exact body bytes and the [`SIGNATURE_HEADER`] value.
#[derive(Debug, Clone)]
pub struct SignedNotify {
    pub body: Vec<u8>,
    pub signature: String,
}

/// Signs `request` with the runner's token (guest side).
pub fn sign(request: &NotifyRequest, token: &ApiToken) -> Result<SignedNotify, NotifyError> {
    request.validate()?;
    let body = serde_json::to_vec(request).map_err(|_| NotifyError::Malformed {
        reason: "the notify could not be encoded",
    })?;
    let tag = mac(token, &body).finalize().into_bytes();
    Ok(SignedNotify {
        signature: format!("{SIGNATURE_SCHEME}{}", hex::encode(tag)),
        body,
    })
}

fn mac(token: &ApiToken, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(DOMAIN);
    mac.update(body);
    mac
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct RunnerSlot {
    token: ApiToken,
    /// nonce → its timestamp, for notices still inside the window.
    seen: HashMap<String, u64>,
}

/// The host side: verifies notices from the runners it registered, each with its own token.
///
/// Not internally synchronised: keep it behind a `Mutex` in a server.
pub struct NotifyVerifier {
    window_ms: u64,
    runners: HashMap<String, RunnerSlot>,
}

impl std::fmt::Debug for NotifyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyVerifier")
            .field("window_ms", &self.window_ms)
            .field("runners", &self.runners.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for NotifyVerifier {
    fn default() -> Self {
        NotifyVerifier::new(DEFAULT_WINDOW)
    }
}

impl NotifyVerifier {
    /// `window`: how far a notice's timestamp may be from the host's clock, either way.
    pub fn new(window: Duration) -> NotifyVerifier {
        NotifyVerifier {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            runners: HashMap::new(),
        }
    }

    /// Expects notices for `runner_id` signed with `token` (replacing an earlier token and
    /// forgetting its nonces).
    pub fn register(&mut self, runner_id: impl Into<String>, token: ApiToken) {
        self.runners.insert(
            runner_id.into(),
            RunnerSlot {
                token,
                seen: HashMap::new(),
            },
        );
    }

    /// Stops accepting notices for `runner_id`; true if it was registered.
    pub fn unregister(&mut self, runner_id: &str) -> bool {
        self.runners.remove(runner_id).is_some()
    }

    pub fn is_registered(&self, runner_id: &str) -> bool {
        self.runners.contains_key(runner_id)
    }

    /// Verifies a received notice against the host's clock. `signature` is the value of the
    /// [`SIGNATURE_HEADER`] header, if any. On success the request is authentic and fresh,
    /// and its `runner_id` is the runner it came from.
    pub fn verify(
        &mut self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<NotifyRequest, NotifyError> {
        self.verify_at(body, signature, unix_ms_now())
    }

    /// [`verify`](Self::verify) with the host's clock given, for tests.
    pub fn verify_at(
        &mut self,
        body: &[u8],
        signature: Option<&str>,
        now_ms: u64,
    ) -> Result<NotifyRequest, NotifyError> {
        if body.len() > MAX_NOTIFY_BODY_BYTES {
            return Err(NotifyError::Malformed {
                reason: "the body is too large",
            });
        }
        let request: NotifyRequest =
            serde_json::from_slice(body).map_err(|_| NotifyError::Malformed {
                reason: "the body is not a notify request (JSON)",
            })?;
        request.validate()?;
        let runner_id = request.runner_id.clone();
        let slot = self
            .runners
            .get_mut(&runner_id)
            .ok_or_else(|| NotifyError::UnknownRunner {
                runner_id: runner_id.clone(),
            })?;

        let signature = signature.ok_or(NotifyError::MissingSignature)?;
        let tag = signature
            .trim()
            .strip_prefix(SIGNATURE_SCHEME)
            .and_then(|hex_tag| hex::decode(hex_tag).ok())
            .ok_or_else(|| NotifyError::BadSignature {
                runner_id: runner_id.clone(),
            })?;
        // Constant-time comparison.
        mac(&slot.token, body)
            .verify_slice(&tag)
            .map_err(|_| NotifyError::BadSignature {
                runner_id: runner_id.clone(),
            })?;

        let skew_ms = i128::from(request.timestamp_ms) - i128::from(now_ms);
        if skew_ms.unsigned_abs() > u128::from(self.window_ms) {
            return Err(NotifyError::Stale {
                runner_id,
                skew_ms,
                window_ms: self.window_ms,
            });
        }

        // Older nonces can be forgotten: their notices now fail the window check.
        let oldest = now_ms.saturating_sub(self.window_ms);
        slot.seen.retain(|_, ts| *ts >= oldest);
        if slot.seen.contains_key(&request.nonce) {
            return Err(NotifyError::Replay { runner_id });
        }
        if slot.seen.len() >= MAX_NONCES_PER_RUNNER {
            return Err(NotifyError::TooMany { runner_id });
        }
        slot.seen
            .insert(request.nonce.clone(), request.timestamp_ms);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const NOW: u64 = 1_795_000_000_000;
    const RUNNER_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const RUNNER_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    struct Fixture {
        verifier: NotifyVerifier,
        token_a: ApiToken,
        token_b: ApiToken,
    }

    fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let token_a = ApiToken::generate()?;
        let token_b = ApiToken::generate()?;
        let mut verifier = NotifyVerifier::new(Duration::from_secs(60));
        verifier.register(RUNNER_A, token_a.clone());
        verifier.register(RUNNER_B, token_b.clone());
        Ok(Fixture {
            verifier,
            token_a,
            token_b,
        })
    }

    fn notice(runner_id: &str, timestamp_ms: u64) -> Result<NotifyRequest, NotifyError> {
        let mut request = NotifyRequest::new(
            runner_id.to_owned(),
            vec!["192.168.64.5".to_owned()],
            8080,
            "0.1.0".to_owned(),
        )?;
        request.timestamp_ms = timestamp_ms;
        Ok(request)
    }

    #[test]
    fn a_signed_fresh_notice_is_accepted_for_its_runner() -> TestResult {
        let mut f = fixture()?;
        let request = notice(RUNNER_A, NOW)?;
        let signed = sign(&request, &f.token_a)?;
        let accepted = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW + 1_000)?;
        assert_eq!(accepted, request);
        Ok(())
    }

    #[test]
    fn a_wrong_token_is_refused() -> TestResult {
        let mut f = fixture()?;
        let stranger = ApiToken::generate()?;
        let signed = sign(&notice(RUNNER_A, NOW)?, &stranger)?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)
            .expect_err("wrong token");
        assert!(matches!(err, NotifyError::BadSignature { .. }), "{err}");
        assert_eq!(err.http_status(), 401);
        Ok(())
    }

    #[test]
    fn another_runners_id_is_refused() -> TestResult {
        // Runner A's guest (holding token A) claims to be runner B.
        let mut f = fixture()?;
        let signed = sign(&notice(RUNNER_B, NOW)?, &f.token_a)?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)
            .expect_err("A cannot speak for B");
        assert!(
            matches!(&err, NotifyError::BadSignature { runner_id } if runner_id == RUNNER_B),
            "{err}"
        );
        // And B's real notice still works afterwards.
        let signed = sign(&notice(RUNNER_B, NOW)?, &f.token_b)?;
        f.verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)?;
        Ok(())
    }

    #[test]
    fn an_unregistered_runner_is_refused() -> TestResult {
        let mut f = fixture()?;
        let signed = sign(
            &notice("cccccccccccccccccccccccccccccccc", NOW)?,
            &f.token_a,
        )?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)
            .expect_err("unknown");
        assert!(matches!(err, NotifyError::UnknownRunner { .. }), "{err}");
        assert!(f.verifier.unregister(RUNNER_A));
        let signed = sign(&notice(RUNNER_A, NOW)?, &f.token_a)?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)
            .expect_err("unregistered");
        assert!(matches!(err, NotifyError::UnknownRunner { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn a_replay_is_refused_but_a_fresh_retry_is_not() -> TestResult {
        let mut f = fixture()?;
        let signed = sign(&notice(RUNNER_A, NOW)?, &f.token_a)?;
        f.verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW + 5)
            .expect_err("replay");
        assert!(matches!(err, NotifyError::Replay { .. }), "{err}");
        // A retry signs a new notice: new nonce.
        let retry = sign(&notice(RUNNER_A, NOW + 10)?, &f.token_a)?;
        f.verifier
            .verify_at(&retry.body, Some(&retry.signature), NOW + 10)?;
        Ok(())
    }

    #[test]
    fn a_replay_after_the_window_is_refused_as_stale() -> TestResult {
        let mut f = fixture()?;
        let signed = sign(&notice(RUNNER_A, NOW)?, &f.token_a)?;
        f.verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)?;
        // Its nonce has been forgotten by then; the timestamp check catches it.
        let later = NOW + 61_000;
        let fresh = sign(&notice(RUNNER_A, later)?, &f.token_a)?;
        f.verifier
            .verify_at(&fresh.body, Some(&fresh.signature), later)?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), later)
            .expect_err("old replay");
        assert!(matches!(err, NotifyError::Stale { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() -> TestResult {
        let mut f = fixture()?;
        for ts in [NOW - 60_001, NOW + 60_001] {
            let signed = sign(&notice(RUNNER_A, ts)?, &f.token_a)?;
            let err = f
                .verifier
                .verify_at(&signed.body, Some(&signed.signature), NOW)
                .expect_err("outside the window");
            assert!(matches!(err, NotifyError::Stale { .. }), "{err}");
        }
        for ts in [NOW - 60_000, NOW + 60_000] {
            let signed = sign(&notice(RUNNER_A, ts)?, &f.token_a)?;
            f.verifier
                .verify_at(&signed.body, Some(&signed.signature), NOW)?;
        }
        Ok(())
    }

    #[test]
    fn tampering_missing_or_garbled_signatures_are_refused() -> TestResult {
        let mut f = fixture()?;
        let signed = sign(&notice(RUNNER_A, NOW)?, &f.token_a)?;
        let tampered = String::from_utf8(signed.body.clone())?
            .replace("192.168.64.5", "10.66.66.66")
            .into_bytes();
        let err = f
            .verifier
            .verify_at(&tampered, Some(&signed.signature), NOW)
            .expect_err("tampered");
        assert!(matches!(err, NotifyError::BadSignature { .. }), "{err}");
        let err = f
            .verifier
            .verify_at(&signed.body, None, NOW)
            .expect_err("unsigned");
        assert!(matches!(err, NotifyError::MissingSignature), "{err}");
        for garbled in ["", "v1=", "v1=zz", "v2=00", &signed.signature[3..]] {
            let err = f
                .verifier
                .verify_at(&signed.body, Some(garbled), NOW)
                .expect_err("garbled");
            assert!(
                matches!(err, NotifyError::BadSignature { .. }),
                "{garbled}: {err}"
            );
        }
        // None of that used up the nonce: the genuine notice still goes through once.
        f.verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)?;
        Ok(())
    }

    #[test]
    fn malformed_bodies_are_refused_with_400() -> TestResult {
        let mut f = fixture()?;
        for body in [
            &b"not json"[..],
            b"{}",
            &vec![b' '; MAX_NOTIFY_BODY_BYTES + 1],
        ] {
            let err = f
                .verifier
                .verify_at(body, Some("v1=00"), NOW)
                .expect_err("malformed");
            assert_eq!(err.http_status(), 400, "{err}");
        }
        let mut request = notice(RUNNER_A, NOW)?;
        request.addresses = vec!["a b".to_owned()];
        assert!(sign(&request, &f.token_a).is_err());
        Ok(())
    }

    #[test]
    fn nonce_memory_is_bounded() -> TestResult {
        let mut f = fixture()?;
        for i in 0..MAX_NONCES_PER_RUNNER {
            let signed = sign(&notice(RUNNER_A, NOW + i as u64)?, &f.token_a)?;
            f.verifier
                .verify_at(&signed.body, Some(&signed.signature), NOW)?;
        }
        let signed = sign(&notice(RUNNER_A, NOW)?, &f.token_a)?;
        let err = f
            .verifier
            .verify_at(&signed.body, Some(&signed.signature), NOW)
            .expect_err("full");
        assert!(matches!(err, NotifyError::TooMany { .. }), "{err}");
        // Once the window has passed, the old nonces are dropped and notices flow again.
        let later = NOW + 120_000;
        let signed = sign(&notice(RUNNER_A, later)?, &f.token_a)?;
        f.verifier
            .verify_at(&signed.body, Some(&signed.signature), later)?;
        Ok(())
    }
}
