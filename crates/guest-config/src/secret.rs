//! Secret strings: the API token and the guest's SSH host private key. Their `Debug` never
//! shows the value, errors never quote it, and the memory is wiped when they are dropped.

use std::fmt;

use rand::TryRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Random bytes in a generated token (hex-encoded, so 64 characters).
pub const TOKEN_BYTES: usize = 32;
/// 32 bytes in unpadded base64 — the least entropy a token may carry.
pub const TOKEN_MIN_LEN: usize = 43;
pub const TOKEN_MAX_LEN: usize = 512;
/// An Ed25519 key in OpenSSH format is ~400 bytes; RSA-4096 ~3.4 KiB.
pub const PRIVATE_KEY_MAX_LEN: usize = 16 * 1024;

const PEM_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the API token must be {TOKEN_MIN_LEN}..={TOKEN_MAX_LEN} characters of A-Z a-z 0-9 - . _ ~ + / = (it has {len} characters{bad})", bad = if *.bad_char { ", some not allowed" } else { "" })]
    InvalidToken { len: usize, bad_char: bool },
    #[error("the SSH host key must be an OpenSSH private key (\"{PEM_BEGIN}\" … \"{PEM_END}\", ASCII, at most {PRIVATE_KEY_MAX_LEN} bytes)")]
    InvalidPrivateKey,
    #[error("the operating system's random source failed; cannot generate a token")]
    Random(#[source] rand::rand_core::OsError),
}

/// The per-runner API token: the bearer token for the runner-agent's `/status`, `/exec` and
/// `/refresh`, and the HMAC key for the guest's notify. Compare with [`ApiToken::matches`]
/// (constant time), never with `==` on [`ApiToken::expose`].
#[derive(Clone)]
pub struct ApiToken(Zeroizing<String>);

impl ApiToken {
    /// A fresh token: [`TOKEN_BYTES`] from the OS random source, hex-encoded.
    pub fn generate() -> Result<ApiToken, SecretError> {
        let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::rngs::OsRng
            .try_fill_bytes(bytes.as_mut())
            .map_err(SecretError::Random)?;
        Ok(ApiToken(Zeroizing::new(hex::encode(bytes.as_ref()))))
    }

    /// Accepts a token made elsewhere, checking only its shape.
    pub fn new(token: String) -> Result<ApiToken, SecretError> {
        let token = Zeroizing::new(token);
        let bad_char = !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        let len = token.len();
        if bad_char || !(TOKEN_MIN_LEN..=TOKEN_MAX_LEN).contains(&len) {
            return Err(SecretError::InvalidToken { len, bad_char });
        }
        Ok(ApiToken(token))
    }

    /// The token itself, for an `Authorization` header or an HMAC key. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented token (its length is not secret).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl Serialize for ApiToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApiToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ApiToken::new(raw).map_err(serde::de::Error::custom)
    }
}

/// An SSH private key in OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`), as text.
/// Only its shape is checked here; sshd (or `dropbearconvert`) parses it.
#[derive(Clone)]
pub struct OpenSshPrivateKey(Zeroizing<String>);

impl OpenSshPrivateKey {
    pub fn new(pem: String) -> Result<OpenSshPrivateKey, SecretError> {
        let pem = Zeroizing::new(pem);
        let body = pem
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|rest| rest.strip_suffix(PEM_END));
        let ok = pem.len() <= PRIVATE_KEY_MAX_LEN
            && pem.is_ascii()
            && body.is_some_and(|body| !body.trim().is_empty());
        if !ok {
            return Err(SecretError::InvalidPrivateKey);
        }
        Ok(OpenSshPrivateKey(pem))
    }

    /// The PEM text, ending with exactly one newline (OpenSSH writes and expects one).
    pub fn to_file_contents(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(self.0.len() + 1));
        text.push_str(self.0.trim_end());
        text.push('\n');
        text
    }

    /// The PEM text as given. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OpenSshPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpenSshPrivateKey(<redacted>)")
    }
}

impl Serialize for OpenSshPrivateKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OpenSshPrivateKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        OpenSshPrivateKey::new(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    pub(crate) const FAKE_PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn generated_tokens_are_64_hex_chars_and_differ() -> TestResult {
        let a = ApiToken::generate()?;
        let b = ApiToken::generate()?;
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
        Ok(())
    }

    #[test]
    fn debug_and_errors_never_show_the_secret() -> TestResult {
        let token = ApiToken::generate()?;
        let shown = format!("{token:?}");
        assert!(!shown.contains(token.expose()), "{shown}");
        let key = OpenSshPrivateKey::new(FAKE_PEM.to_owned())?;
        assert!(!format!("{key:?}").contains("b3Bl"));

        let secret_like = "s3cr3t value that is long enough to be a token!!";
        let err = ApiToken::new(secret_like.to_owned()).expect_err("spaces are not allowed");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = serde_json::from_str::<ApiToken>(&format!("\"{secret_like}\""))
            .expect_err("spaces are not allowed");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        Ok(())
    }

    #[test]
    fn token_shape_is_checked() {
        assert!(ApiToken::new("a".repeat(TOKEN_MIN_LEN - 1)).is_err());
        assert!(ApiToken::new("a".repeat(TOKEN_MIN_LEN)).is_ok());
        assert!(ApiToken::new("a".repeat(TOKEN_MAX_LEN + 1)).is_err());
        assert!(ApiToken::new(format!("{}\n", "a".repeat(60))).is_err());
        assert!(ApiToken::new("A-b.c_d~e+f/g=".repeat(4)).is_ok());
    }

    #[test]
    fn matches_compares_whole_tokens() -> TestResult {
        let token = ApiToken::generate()?;
        assert!(token.matches(token.expose().as_bytes()));
        assert!(!token.matches(&token.expose().as_bytes()[..63]));
        assert!(!token.matches(b""));
        let mut other = token.expose().as_bytes().to_vec();
        other[10] ^= 1;
        assert!(!token.matches(&other));
        Ok(())
    }

    #[test]
    fn private_key_shape_is_checked_and_written_with_one_newline() -> TestResult {
        let key = OpenSshPrivateKey::new(format!("{FAKE_PEM}\n\n"))?;
        assert!(key.to_file_contents().ends_with("-----\n"));
        assert!(!key.to_file_contents().ends_with("\n\n"));
        assert!(OpenSshPrivateKey::new("ssh-ed25519 AAAA".to_owned()).is_err());
        assert!(OpenSshPrivateKey::new(format!("{PEM_BEGIN}\n{PEM_END}")).is_err());
        assert!(OpenSshPrivateKey::new(FAKE_PEM.replace("b3Bl", "é")).is_err());
        Ok(())
    }
}
