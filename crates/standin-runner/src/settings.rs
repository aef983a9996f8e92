//! The files `configure` writes in the runner root, in the runner's format
//! (actions-runner.md "Files configure writes in the root"):
//! - `.runner`: Newtonsoft JSON, indented by two spaces, camelCase, UTF-8 **with a BOM**, no
//!   final newline, members with default values omitted (ConfigurationStore.cs:17-60, with
//!   `isHostedServer` written only when false).
//! - `.credentials`: `{"scheme": "OAuth", "data": {clientId, authorizationUrl,
//!   requireFipsCryptography}}`, same encoding.
//! - `.credentials_rsaparams`: an RSA-2048 key's parameters as base64, mode 600.
//!   **The stand-in writes random bytes of the right sizes, not a real key**: nothing here
//!   signs anything.
//!
//! The registration token is never written: it is not part of any of these files upstream
//! either.

use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const SETTINGS_FILE: &str = ".runner";
pub const CREDENTIALS_FILE: &str = ".credentials";
pub const RSA_PARAMS_FILE: &str = ".credentials_rsaparams";
/// What `DeleteLocalRunnerConfig` removes (ConfigurationManager.cs:496-524).
pub const LOCAL_CONFIG_FILES: &[&str] = &[
    CREDENTIALS_FILE,
    ".credentials_migrated",
    RSA_PARAMS_FILE,
    SETTINGS_FILE,
    ".runner_migrated",
];

const BOM: &str = "\u{feff}";

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// `RunnerSettings`, members in declaration order (which is Newtonsoft's output order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSettings {
    /// Written only when false (`OnSerializing` drops `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_hosted_server: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub agent_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_session_recover: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pool_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_update: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ephemeral: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    #[serde(default, rename = "gitHubUrl", skip_serializing_if = "Option::is_none")]
    pub github_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_folder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_socket_address: Option<String>,
    #[serde(default, rename = "useV2Flow", skip_serializing_if = "is_false")]
    pub use_v2_flow: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_runner_admin_flow: bool,
    #[serde(
        default,
        rename = "serverUrlV2",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_url_v2: Option<String>,
}

/// What `configure` learned from its command line.
#[derive(Debug, Clone)]
pub struct Registration {
    pub github_url: String,
    pub name: String,
    pub ephemeral: bool,
    pub disable_update: bool,
    pub work_folder: String,
}

impl RunnerSettings {
    /// Settings as a registration with github.com (or GHES) would give them. Ids and service
    /// URLs are made up: there is no service.
    pub fn registered(registration: &Registration) -> RunnerSettings {
        let mut rng = rand::rng();
        let hosted = is_hosted_server(&registration.github_url);
        let tenant: String = (0..44)
            .map(|_| {
                let n = rng.random_range(0..62u8);
                char::from(match n {
                    0..=9 => b'0' + n,
                    10..=35 => b'a' + n - 10,
                    _ => b'A' + n - 36,
                })
            })
            .collect();
        let server_url = if hosted {
            format!(
                "https://pipelinesghubeus{}.actions.githubusercontent.com/{tenant}/",
                rng.random_range(1..=30u8)
            )
        } else {
            format!("{}/_services/pipelines/", origin(&registration.github_url))
        };
        RunnerSettings {
            is_hosted_server: (!hosted).then_some(false),
            agent_id: rng.random_range(1..1_000_000),
            agent_name: Some(registration.name.clone()),
            pool_id: 1,
            pool_name: Some("Default".into()),
            disable_update: registration.disable_update,
            ephemeral: registration.ephemeral,
            server_url: Some(server_url),
            github_url: Some(registration.github_url.clone()),
            work_folder: Some(registration.work_folder.clone()),
            use_v2_flow: hosted,
            use_runner_admin_flow: hosted,
            server_url_v2: hosted.then(|| "https://broker.actions.githubusercontent.com/".into()),
            ..RunnerSettings::default()
        }
    }

    /// The file's bytes: BOM + indented JSON.
    pub fn to_file_text(&self) -> String {
        to_file_text(self)
    }

    pub fn parse(text: &str) -> Result<RunnerSettings, serde_json::Error> {
        serde_json::from_str(text.strip_prefix(BOM).unwrap_or(text))
    }

    pub fn load(root: &Path) -> io::Result<RunnerSettings> {
        let text = std::fs::read_to_string(root.join(SETTINGS_FILE))?;
        Self::parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// github.com and GitHub-hosted (`*.ghe.com`) tenants count as hosted
/// (Runner.Sdk/Util/UrlUtil.IsHostedServer).
pub fn is_hosted_server(url: &str) -> bool {
    let host = host(url).to_ascii_lowercase();
    matches!(
        host.as_str(),
        "github.com" | "www.github.com" | "github.localhost"
    ) || host.ends_with(".ghe.com")
        || host.ends_with(".ghe.localhost")
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            format!("{scheme}://{authority}")
        }
        None => url.to_string(),
    }
}

fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    authority.split(':').next().unwrap_or(authority)
}

/// An absolute `http(s)://host…` URL (what the runner's `ServerUrlValidator` accepts, less
/// its finer points).
pub fn is_valid_url(url: &str) -> bool {
    let Some((scheme, _)) = url.split_once("://") else {
        return false;
    };
    (scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http"))
        && !host(url).is_empty()
        && !url.chars().any(char::is_whitespace)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    scheme: &'static str,
    data: CredentialData,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CredentialData {
    client_id: String,
    authorization_url: String,
    require_fips_cryptography: &'static str,
}

/// `RSAParametersSerializable`: lower-camel member names, byte arrays as base64.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RsaParameters {
    d: String,
    dp: String,
    dq: String,
    exponent: String,
    inverse_q: String,
    modulus: String,
    p: String,
    q: String,
}

fn to_file_text<T: Serialize>(value: &T) -> String {
    // serde_json's pretty printer indents by two spaces and writes `"key": value`, as
    // Newtonsoft's Formatting.Indented does; serialising these plain structs cannot fail.
    let json = serde_json::to_string_pretty(value).unwrap_or_default();
    format!("{BOM}{json}")
}

/// A random version-4 GUID in .NET's default format.
fn guid() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn random_base64(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill(bytes.as_mut_slice());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Writes `.credentials_rsaparams` (mode 600 from the start). Random bytes of an RSA-2048
/// key's sizes, not a key.
pub fn write_rsa_params(root: &Path) -> io::Result<()> {
    let params = RsaParameters {
        d: random_base64(256),
        dp: random_base64(128),
        dq: random_base64(128),
        exponent: base64::engine::general_purpose::STANDARD.encode([1u8, 0, 1]),
        inverse_q: random_base64(128),
        modulus: random_base64(256),
        p: random_base64(128),
        q: random_base64(128),
    };
    write_private(&root.join(RSA_PARAMS_FILE), &to_file_text(&params))
}

pub fn write_credentials(root: &Path, settings: &RunnerSettings) -> io::Result<()> {
    let base = settings
        .server_url
        .clone()
        .unwrap_or_else(|| "https://pipelines.actions.githubusercontent.com/".into());
    let credentials = Credentials {
        scheme: "OAuth",
        data: CredentialData {
            client_id: guid(),
            authorization_url: format!("{}_apis/oauth2/token", with_slash(&base)),
            require_fips_cryptography: "True",
        },
    };
    std::fs::write(root.join(CREDENTIALS_FILE), to_file_text(&credentials))
}

pub fn write_settings(root: &Path, settings: &RunnerSettings) -> io::Result<()> {
    let path = root.join(SETTINGS_FILE);
    // Upstream deletes an existing file first (it is "hidden" on Windows).
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::write(path, settings.to_file_text())
}

/// `DeleteLocalRunnerConfig`: the credentials, the key and the settings (and migrated copies).
pub fn delete_local_config(root: &Path) -> io::Result<()> {
    for name in LOCAL_CONFIG_FILES {
        match std::fs::remove_file(root.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn is_configured(root: &Path) -> bool {
    root.join(SETTINGS_FILE).is_file()
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn registration(url: &str) -> Registration {
        Registration {
            github_url: url.into(),
            name: "myshoes-1".into(),
            ephemeral: true,
            disable_update: false,
            work_folder: "_work".into(),
        }
    }

    #[test]
    fn dot_runner_is_bom_camel_case_indented_and_omits_defaults() -> Result<(), serde_json::Error> {
        let settings = RunnerSettings {
            agent_id: 42,
            agent_name: Some("myshoes-1".into()),
            pool_id: 1,
            pool_name: Some("Default".into()),
            ephemeral: true,
            server_url: Some("https://pipelines.example/abc/".into()),
            github_url: Some("https://github.com/example-org".into()),
            work_folder: Some("_work".into()),
            ..RunnerSettings::default()
        };
        let text = settings.to_file_text();
        assert_eq!(
            text,
            "\u{feff}{\n  \"agentId\": 42,\n  \"agentName\": \"myshoes-1\",\n  \"poolId\": 1,\n  \
             \"poolName\": \"Default\",\n  \"ephemeral\": true,\n  \
             \"serverUrl\": \"https://pipelines.example/abc/\",\n  \
             \"gitHubUrl\": \"https://github.com/example-org\",\n  \"workFolder\": \"_work\"\n}"
        );
        assert_eq!(RunnerSettings::parse(&text)?, settings);
        Ok(())
    }

    #[test]
    fn a_github_com_registration_looks_like_upstream() -> Result<(), serde_json::Error> {
        let settings = RunnerSettings::registered(&registration("https://github.com/example-org"));
        let text = settings.to_file_text();
        let value: serde_json::Value = serde_json::from_str(text.trim_start_matches(BOM))?;
        let keys: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        // serde_json's map sorts keys; check presence, and the order in the text.
        for key in [
            "agentId",
            "agentName",
            "poolId",
            "poolName",
            "ephemeral",
            "serverUrl",
            "gitHubUrl",
            "workFolder",
            "useV2Flow",
            "useRunnerAdminFlow",
            "serverUrlV2",
        ] {
            assert!(keys.contains(&key), "{key} missing from {text}");
        }
        assert!(!keys.contains(&"isHostedServer"), "{text}");
        assert!(!keys.contains(&"disableUpdate"), "{text}");
        let at = |key: &str| text.find(&format!("\"{key}\"")).unwrap_or(usize::MAX);
        assert!(at("agentId") < at("agentName") && at("ephemeral") < at("serverUrl"));
        assert!(at("gitHubUrl") < at("workFolder") && at("workFolder") < at("useV2Flow"));
        assert_eq!(value["gitHubUrl"], "https://github.com/example-org");
        assert_eq!(value["ephemeral"], true);
        assert_eq!(value["workFolder"], "_work");

        let ghes = RunnerSettings::registered(&registration("https://ghes.example:8443/org"));
        assert_eq!(ghes.is_hosted_server, Some(false));
        assert_eq!(
            ghes.server_url.as_deref(),
            Some("https://ghes.example:8443/_services/pipelines/")
        );
        assert!(ghes
            .to_file_text()
            .contains("\n  \"isHostedServer\": false,\n  \"agentId\""));
        Ok(())
    }

    #[test]
    fn credentials_and_key_files_have_their_shapes_and_modes() -> io::Result<()> {
        let root = tempfile::tempdir()?;
        let settings = RunnerSettings::registered(&registration("https://github.com/o"));
        write_rsa_params(root.path())?;
        write_credentials(root.path(), &settings)?;
        write_settings(root.path(), &settings)?;
        assert!(is_configured(root.path()));

        let key_path = root.path().join(RSA_PARAMS_FILE);
        assert_eq!(
            std::fs::metadata(&key_path)?.permissions().mode() & 0o777,
            0o600
        );
        let key = std::fs::read_to_string(&key_path)?;
        assert!(key.starts_with(BOM));
        let key: serde_json::Value = serde_json::from_str(key.trim_start_matches(BOM))?;
        for field in ["d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"] {
            assert!(key[field].is_string(), "{field}");
        }
        assert_eq!(key["exponent"], "AQAB");
        let modulus = base64::engine::general_purpose::STANDARD
            .decode(key["modulus"].as_str().unwrap_or_default())
            .map_err(|e| io::Error::other(e.to_string()))?;
        assert_eq!(modulus.len(), 256);

        let creds = std::fs::read_to_string(root.path().join(CREDENTIALS_FILE))?;
        let creds: serde_json::Value = serde_json::from_str(creds.trim_start_matches(BOM))?;
        assert_eq!(creds["scheme"], "OAuth");
        assert_eq!(creds["data"]["requireFipsCryptography"], "True");
        assert_eq!(creds["data"]["clientId"].as_str().map(str::len), Some(36));
        assert!(creds["data"]["authorizationUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/_apis/oauth2/token")));

        assert_eq!(RunnerSettings::load(root.path())?, settings);
        std::fs::write(root.path().join(".env"), "LANG=C\n")?;
        delete_local_config(root.path())?;
        assert!(!is_configured(root.path()));
        assert!(!key_path.exists() && !root.path().join(CREDENTIALS_FILE).exists());
        assert!(root.path().join(".env").exists(), ".env stays");
        Ok(())
    }

    #[test]
    fn urls_are_checked_and_classified() {
        assert!(is_valid_url("https://github.com/example-org"));
        assert!(is_valid_url("http://ghes.local:8080/org/repo"));
        assert!(!is_valid_url("github.com/example-org"));
        assert!(!is_valid_url("ftp://github.com/x"));
        assert!(!is_valid_url("https:///x"));
        assert!(is_hosted_server("https://github.com/o"));
        assert!(is_hosted_server("https://tenant.ghe.com/o"));
        assert!(!is_hosted_server("https://ghes.example/o"));
        assert!(!is_hosted_server("https://github.com.evil.example/o"));
    }
}
