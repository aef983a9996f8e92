//! Agents' own credentials: 256-bit random secrets handed out once at enrollment, of which the
//! server keeps only a SHA-256 (a fast hash suffices for random secrets of this length).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A freshly issued credential; its text is shown to the enrolling agent only.
pub struct Issued {
    pub secret: String,
    pub hash: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// A new random credential and its hash.
pub fn issue() -> Issued {
    let secret = format!("svzagent_{}", hex::encode(rand::random::<[u8; 32]>()));
    let hash = hash(&secret);
    Issued { secret, hash }
}

/// SHA-256 of `secret`, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `presented` is the credential whose hash is `stored` (compared in constant time).
pub fn matches(presented: &str, stored: &str) -> bool {
    !stored.is_empty() && hash(presented).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Whether two secrets are equal, in constant time (for configured tokens).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_match_only_their_hash_and_never_show_in_debug() {
        let a = issue();
        let b = issue();
        assert_ne!(a.secret, b.secret);
        assert!(matches(&a.secret, &a.hash));
        assert!(!matches(&b.secret, &a.hash));
        assert!(!matches("", &a.hash));
        assert!(
            !matches(&a.secret, ""),
            "no credential stored matches nothing"
        );
        assert!(!format!("{a:?}").contains(&a.secret));
        assert_eq!(a.hash.len(), 64);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
