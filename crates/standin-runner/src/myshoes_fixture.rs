//! myshoes v1.20.1's setup script (shared/fixtures/myshoes/), rendered for a test: the exact
//! wrapper with only the registration token (and, if asked, the GitHub URL and the runner
//! name) substituted inside its compressed main script. Every other byte stays as it is.
//!
//! The wrapper's line 6 is `export COMPRESSED_SCRIPT=<base64(gzip(main.sh))>`; rendering
//! decodes it, replaces the placeholder line(s) of main.sh, and encodes it again (gzip by
//! flate2, so the blob differs from Go's; the decoded script is what counts).

use base64::Engine;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The wrapper myshoes passes as `setup_script`, relative to the shared directory.
pub const WRAPPER: &str = "fixtures/myshoes/setup-script.linux-x64.sh";
pub const PROVENANCE: &str = "fixtures/myshoes/PROVENANCE.md";
/// The token placeholder the fixture was rendered with.
pub const TOKEN_PLACEHOLDER: &str = "__REGISTRATION_TOKEN__";
const PAYLOAD_PREFIX: &str = "export COMPRESSED_SCRIPT=";
const TOKEN_LINE: &str = "RUNNER_TOKEN=__REGISTRATION_TOKEN__";
const URL_LINE: &str = "ghe_hostname=https://github.com";
const NAME_LINE: &str = "runner_name=myshoes-00000000-0000-0000-0000-000000000000";
/// Environment variable naming the shared directory.
pub const SHARED_DIR_ENV: &str = "SHOESVZ_SHARED_DIR";

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read {path}; set {SHARED_DIR_ENV} to the shared directory holding fixtures/myshoes/")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has sha256 {actual}, but PROVENANCE.md records {expected}; the fixture was changed, restore it")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("PROVENANCE.md has no sha256 for {0}")]
    NoChecksum(&'static str),
    #[error("the wrapper is not myshoes' setup script: {0}")]
    Format(&'static str),
    #[error("the compressed main script does not decode")]
    Decode(#[source] std::io::Error),
    #[error("{0} must be 1 to 255 characters of A-Z, a-z, 0-9, `.`, `_` and `-` (it is pasted into a shell script)")]
    Value(&'static str),
    #[error("the URL must be http(s)://host[:port] with no path, quotes or spaces (it is pasted into a shell script)")]
    Url,
}

/// What to put into the script; `None` keeps the fixture's value.
#[derive(Clone, Default)]
pub struct Substitutions {
    pub token: String,
    /// `ghe_hostname` (myshoes' `GITHUB_URL`), e.g. `https://ghes.example`; the runner URL
    /// becomes `<it>/example-org`.
    pub github_url: Option<String>,
    pub runner_name: Option<String>,
}

impl std::fmt::Debug for Substitutions {
    // The token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Substitutions")
            .field("token", &"***")
            .field("github_url", &self.github_url)
            .field("runner_name", &self.runner_name)
            .finish()
    }
}

/// `SHOESVZ_SHARED_DIR`, else `<workspace>/../shared`.
pub fn default_shared_dir() -> PathBuf {
    match std::env::var_os(SHARED_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The wrapper with `token` substituted.
pub fn render_setup_script(shared_dir: &Path, token: &str) -> Result<String, FixtureError> {
    render_setup_script_with(
        shared_dir,
        &Substitutions {
            token: token.to_string(),
            ..Substitutions::default()
        },
    )
}

pub fn render_setup_script_with(
    shared_dir: &Path,
    substitutions: &Substitutions,
) -> Result<String, FixtureError> {
    let wrapper = load_wrapper(shared_dir)?;
    render(&wrapper, substitutions)
}

/// The wrapper's text, checked against the sha256 in PROVENANCE.md.
pub fn load_wrapper(shared_dir: &Path) -> Result<String, FixtureError> {
    let read = |relative: &str| {
        let path = shared_dir.join(relative);
        std::fs::read(&path).map_err(|source| FixtureError::Read { path, source })
    };
    let provenance = String::from_utf8_lossy(&read(PROVENANCE)?).into_owned();
    let expected = recorded_sha256(&provenance, "setup-script.linux-x64.sh")
        .ok_or(FixtureError::NoChecksum("setup-script.linux-x64.sh"))?;
    let bytes = read(WRAPPER)?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        return Err(FixtureError::Checksum {
            path: shared_dir.join(WRAPPER),
            expected,
            actual,
        });
    }
    String::from_utf8(bytes).map_err(|_| FixtureError::Format("it is not UTF-8"))
}

/// The 64-hex-digit sha256 on the table row of `file` (`| \`file\` | … | \`<sha256>\` |`).
fn recorded_sha256(provenance: &str, file: &str) -> Option<String> {
    let marker = format!("| `{file}` |");
    provenance
        .lines()
        .filter(|line| line.starts_with(&marker))
        .flat_map(|line| line.split('`'))
        .find(|cell| cell.len() == 64 && cell.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// Substitutes into a wrapper text (see the module docs).
pub fn render(wrapper: &str, substitutions: &Substitutions) -> Result<String, FixtureError> {
    check_value("the token", &substitutions.token)?;
    let mut main = decode_main(wrapper)?;
    if main.matches(TOKEN_PLACEHOLDER).count() != 1 {
        return Err(FixtureError::Format(
            "the main script must hold the token placeholder exactly once",
        ));
    }
    main = replace_line(
        &main,
        TOKEN_LINE,
        &format!("RUNNER_TOKEN={}", substitutions.token),
    )?;
    if let Some(url) = &substitutions.github_url {
        check_url(url)?;
        main = replace_line(&main, URL_LINE, &format!("ghe_hostname={url}"))?;
    }
    if let Some(name) = &substitutions.runner_name {
        check_value("the runner name", name)?;
        main = replace_line(&main, NAME_LINE, &format!("runner_name={name}"))?;
    }
    let payload = encode_main(&main).map_err(FixtureError::Decode)?;
    let mut out = String::with_capacity(wrapper.len() + 64);
    let mut replaced = false;
    for piece in wrapper.split_inclusive('\n') {
        if !replaced && piece.starts_with(PAYLOAD_PREFIX) {
            out.push_str(PAYLOAD_PREFIX);
            out.push_str(&payload);
            if piece.ends_with('\n') {
                out.push('\n');
            }
            replaced = true;
        } else {
            out.push_str(piece);
        }
    }
    Ok(out)
}

/// main.sh from a wrapper.
pub fn decode_main(wrapper: &str) -> Result<String, FixtureError> {
    let line = wrapper
        .lines()
        .find(|l| l.starts_with(PAYLOAD_PREFIX))
        .ok_or(FixtureError::Format("no `export COMPRESSED_SCRIPT=` line"))?;
    let gzipped = base64::engine::general_purpose::STANDARD
        .decode(line[PAYLOAD_PREFIX.len()..].trim_end())
        .map_err(|_| FixtureError::Format("COMPRESSED_SCRIPT is not base64"))?;
    let mut main = String::new();
    GzDecoder::new(gzipped.as_slice())
        .read_to_string(&mut main)
        .map_err(FixtureError::Decode)?;
    Ok(main)
}

/// `base64(gzip(main))` as the wrapper's line 6 holds it (standard alphabet, one line).
pub fn encode_main(main: &str) -> std::io::Result<String> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(main.as_bytes())?;
    let gzipped = encoder.finish()?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gzipped))
}

fn replace_line(text: &str, line: &str, with: &str) -> Result<String, FixtureError> {
    let mut found = 0;
    let out: String = text
        .split_inclusive('\n')
        .map(|piece| {
            let body = piece.strip_suffix('\n').unwrap_or(piece);
            if body == line {
                found += 1;
                let newline = if piece.ends_with('\n') { "\n" } else { "" };
                format!("{with}{newline}")
            } else {
                piece.to_string()
            }
        })
        .collect();
    if found != 1 {
        return Err(FixtureError::Format(
            "a line to substitute is missing or repeated",
        ));
    }
    Ok(out)
}

fn check_value(what: &'static str, value: &str) -> Result<(), FixtureError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FixtureError::Value(what))
    }
}

fn check_url(url: &str) -> Result<(), FixtureError> {
    let Some((scheme, authority)) = url.split_once("://") else {
        return Err(FixtureError::Url);
    };
    let ok = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(FixtureError::Url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapper_for(main: &str) -> String {
        let payload = encode_main(main).expect("encode");
        format!("#!/bin/bash\n\nset -e\n\n# c\n{PAYLOAD_PREFIX}{payload}\nexport MAIN_SCRIPT_PATH=/tmp/main.sh\n\nbash -c ${{MAIN_SCRIPT_PATH}}")
    }

    const MAIN: &str = "#!/bin/bash\nrunner_scope=example-org\nghe_hostname=https://github.com\nrunner_name=myshoes-00000000-0000-0000-0000-000000000000\nRUNNER_TOKEN=__REGISTRATION_TOKEN__\necho done\n";

    #[test]
    fn only_line_six_changes_and_it_decodes_to_the_substituted_script() -> Result<(), FixtureError>
    {
        let wrapper = wrapper_for(MAIN);
        let rendered = render(
            &wrapper,
            &Substitutions {
                token: "AABBCC123".into(),
                ..Substitutions::default()
            },
        )?;
        let (a, b): (Vec<&str>, Vec<&str>) = (
            wrapper.split('\n').collect(),
            rendered.split('\n').collect(),
        );
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if i == 5 {
                assert_ne!(x, y);
            } else {
                assert_eq!(x, y, "line {}", i + 1);
            }
        }
        assert!(
            !rendered.ends_with('\n'),
            "no final newline, as the fixture"
        );
        let main = decode_main(&rendered)?;
        assert_eq!(main, MAIN.replace(TOKEN_PLACEHOLDER, "AABBCC123"));
        assert!(
            !rendered.contains("AABBCC123"),
            "the token is only inside the blob"
        );
        Ok(())
    }

    #[test]
    fn url_and_name_are_substituted_and_bad_values_refused() -> Result<(), FixtureError> {
        let wrapper = wrapper_for(MAIN);
        let rendered = render(
            &wrapper,
            &Substitutions {
                token: "T0KEN".into(),
                github_url: Some("https://ghes.example:8443".into()),
                runner_name: Some("shoes-vz-1".into()),
            },
        )?;
        let main = decode_main(&rendered)?;
        assert!(main.contains("\nghe_hostname=https://ghes.example:8443\n"));
        assert!(main.contains("\nrunner_name=shoes-vz-1\n"));
        for token in ["", "a b", "x;reboot", "$(id)", "\"q\""] {
            let result = render(
                &wrapper,
                &Substitutions {
                    token: token.into(),
                    ..Substitutions::default()
                },
            );
            assert!(matches!(result, Err(FixtureError::Value(_))), "{token:?}");
        }
        let bad_url = render(
            &wrapper,
            &Substitutions {
                token: "T".into(),
                github_url: Some("https://x/y; rm -rf /".into()),
                ..Substitutions::default()
            },
        );
        assert!(matches!(bad_url, Err(FixtureError::Url)));
        let debug = format!(
            "{:?}",
            Substitutions {
                token: "SECRET".into(),
                ..Substitutions::default()
            }
        );
        assert!(!debug.contains("SECRET"));
        Ok(())
    }

    #[test]
    fn the_provenance_table_is_read() {
        let table = "| `setup-script.linux-x64.sh` | the wrapper | `33A0d033c004a193c5ce180ce95c06177806e5ef0d234feed53341bfb2bcbc96` |\n\
                     | `setup-script.osx-arm64.sh` | same | `33a0d033…bcbc96` |\n";
        assert_eq!(
            recorded_sha256(table, "setup-script.linux-x64.sh").as_deref(),
            Some("33a0d033c004a193c5ce180ce95c06177806e5ef0d234feed53341bfb2bcbc96")
        );
        assert_eq!(recorded_sha256(table, "setup-script.osx-arm64.sh"), None);
    }

    /// The real fixture, when the shared directory is there (the crate's integration tests
    /// require it under CI).
    #[test]
    fn the_real_fixture_renders_when_present() -> Result<(), FixtureError> {
        let shared = default_shared_dir();
        if !shared.join(WRAPPER).is_file() {
            let reason = format!(
                "no {} (set {SHARED_DIR_ENV})",
                shared.join(WRAPPER).display()
            );
            assert!(
                std::env::var_os("CI").is_none(),
                "{reason}; CI is set, so the fixture must be there"
            );
            eprintln!("SKIPPED: {reason}");
            return Ok(());
        }
        let original = load_wrapper(&shared)?;
        let rendered = render_setup_script(&shared, "ABCDEFGHIJKLMNOPQRSTUVWXYZ012")?;
        let main = decode_main(&rendered)?;
        let fixture_main =
            std::fs::read_to_string(shared.join("fixtures/myshoes/setup-script.linux-x64.main.sh"))
                .map_err(|source| FixtureError::Read {
                    path: shared.clone(),
                    source,
                })?;
        assert_eq!(
            main,
            fixture_main.replace(TOKEN_PLACEHOLDER, "ABCDEFGHIJKLMNOPQRSTUVWXYZ012")
        );
        assert_eq!(original.lines().count(), rendered.lines().count());
        Ok(())
    }
}
