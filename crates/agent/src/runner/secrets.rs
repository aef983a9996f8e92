//! Masking a runner's secrets in what operators see of it (its setup log, its console).
//!
//! The setup script carries a GitHub registration token. myshoes' own script masks it when it
//! echoes its config command, but any script may print it, so everything shown is masked:
//! every word of the script that looks like a credential (16+ characters of letters, digits,
//! `_` and `-`, with both letters and digits), and anything shaped like a GitHub token
//! (`ghp_…`, `ghs_…`, `github_pat_…`, and 29-character registration tokens).

/// What to hide in one runner's output.
#[derive(Default, Clone)]
pub struct SecretMask {
    words: Vec<String>,
}

impl std::fmt::Debug for SecretMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretMask")
            .field("words", &self.words.len())
            .finish()
    }
}

const MASK: &str = "***";

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether `word` could be a credential: long, and mixing letters and digits.
fn credential_like(word: &str) -> bool {
    word.len() >= 16
        && word.bytes().any(|b| b.is_ascii_digit())
        && word.bytes().any(|b| b.is_ascii_alphabetic())
}

/// GitHub's token shapes, whatever script they came from.
fn github_token_like(word: &str) -> bool {
    let prefixed = ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]
        .iter()
        .any(|prefix| word.starts_with(prefix) && word.len() >= prefix.len() + 20);
    let registration = word.len() == 29
        && word
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    prefixed || registration
}

impl SecretMask {
    pub fn from_script(script: &str) -> SecretMask {
        let mut words: Vec<String> = script
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .filter(|word| credential_like(word))
            .map(str::to_string)
            .collect();
        words.sort_by_key(|w| std::cmp::Reverse(w.len()));
        words.dedup();
        SecretMask { words }
    }

    /// `text` with every secret replaced by `***`.
    pub fn mask(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if !is_word_byte(text[i]) {
                out.push(text[i]);
                i += 1;
                continue;
            }
            let start = i;
            while i < text.len() && is_word_byte(text[i]) {
                i += 1;
            }
            let word = &text[start..i];
            match std::str::from_utf8(word) {
                Ok(word) if github_token_like(word) => out.extend_from_slice(MASK.as_bytes()),
                Ok(word) => out.extend_from_slice(self.mask_inside(word).as_bytes()),
                Err(_) => out.extend_from_slice(word),
            }
        }
        out
    }

    /// A word may hold a secret inside it (`--token=XYZ` splits at `=`, but `TOKENXYZ` does not).
    fn mask_inside(&self, word: &str) -> String {
        let mut word = word.to_string();
        for secret in &self.words {
            if word.contains(secret.as_str()) {
                word = word.replace(secret.as_str(), MASK);
            }
        }
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_credentials_and_github_tokens_are_masked() {
        let mask = SecretMask::from_script(
            "./config.sh --url https://github.com/org --token AABBCCDDEEFF00112233 --name myshoes-1\n\
             export X=sk_live_0123456789abcdef\n",
        );
        let out = mask.mask(
            b"registering with AABBCCDDEEFF00112233 and sk_live_0123456789abcdef;\n\
              also ghp_0123456789abcdefghij0123456789abcdef and ABCDEFGHIJKLMNOPQRSTUVWXYZ012\n\
              Listening for Jobs at https://github.com/org (myshoes-1)\n",
        );
        let out = String::from_utf8(out).expect("utf8");
        for secret in [
            "AABBCCDDEEFF00112233",
            "sk_live_0123456789abcdef",
            "ghp_0123456789abcdefghij",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ012",
        ] {
            assert!(!out.contains(secret), "{secret} shown: {out}");
        }
        assert!(
            out.contains("Listening for Jobs at https://github.com/org (myshoes-1)"),
            "{out}"
        );
        assert_eq!(out.matches("***").count(), 4, "{out}");
    }

    #[test]
    fn ordinary_words_and_non_utf8_pass_through() {
        let mask = SecretMask::from_script("echo hello-world-without-digits\n");
        assert_eq!(
            mask.mask(b"hello-world-without-digits"),
            b"hello-world-without-digits"
        );
        assert_eq!(mask.mask(&[0xff, b'a', 0xfe]), vec![0xff, b'a', 0xfe]);
    }
}
