//! The plugin side of hashicorp/go-plugin's handshake, as myshoes drives it: the magic cookie,
//! the protocol versions, and the one line on stdout that tells the host where to connect.

use std::io::Write;
use std::net::SocketAddr;

pub const MAGIC_COOKIE_KEY: &str = "SHOES_PLUGIN_MAGIC_COOKIE";
pub const MAGIC_COOKIE_VALUE: &str = "are_you_a_shoes?";
/// go-plugin's core protocol version (field 1 of the handshake line).
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// myshoes' plugin protocol version (field 2).
pub const APP_PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "this binary is a myshoes provider plugin and is not meant to be run by hand. \
         Point myshoes' plugin path at it; myshoes starts it with {MAGIC_COOKIE_KEY} set"
    )]
    NoCookie,
    #[error(
        "the host asked for go-plugin AutoMTLS (PLUGIN_CLIENT_CERT is set), which shoes-vz-plugin \
         does not support; myshoes does not use it, so start the plugin without AutoMTLS"
    )]
    AutoMtls,
    #[error(
        "the host speaks plugin protocol version(s) {0:?} but shoes-vz-plugin speaks version \
         {APP_PROTOCOL_VERSION}; use a myshoes release with plugin protocol {APP_PROTOCOL_VERSION}"
    )]
    ProtocolVersion(String),
}

/// Refuses to run unless started by a go-plugin host with myshoes' cookie.
pub fn check_cookie(env: impl Fn(&str) -> Option<String>) -> Result<(), HandshakeError> {
    match env(MAGIC_COOKIE_KEY) {
        Some(value) if value == MAGIC_COOKIE_VALUE => Ok(()),
        _ => Err(HandshakeError::NoCookie),
    }
}

/// Checks what the host asks for beyond the cookie: no AutoMTLS, and a protocol version we
/// speak (an unset `PLUGIN_PROTOCOL_VERSIONS` means the host's default, which is ours).
pub fn check_host(env: impl Fn(&str) -> Option<String>) -> Result<(), HandshakeError> {
    if env("PLUGIN_CLIENT_CERT").is_some_and(|cert| !cert.is_empty()) {
        return Err(HandshakeError::AutoMtls);
    }
    match env("PLUGIN_PROTOCOL_VERSIONS") {
        Some(versions) if !versions.trim().is_empty() => {
            let ours = APP_PROTOCOL_VERSION.to_string();
            if versions.split(',').any(|v| v.trim() == ours) {
                Ok(())
            } else {
                Err(HandshakeError::ProtocolVersion(versions))
            }
        }
        _ => Ok(()),
    }
}

/// `1|1|tcp|127.0.0.1:PORT|grpc` and a newline.
pub fn handshake_line(addr: SocketAddr) -> String {
    format!("{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|tcp|{addr}|grpc\n")
}

/// Writes the handshake line to stdout and flushes it. The only thing this process ever
/// writes to stdout.
pub fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(handshake_line(addr).as_bytes())?;
    stdout.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn the_line_is_what_go_plugin_parses() {
        let addr: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        assert_eq!(handshake_line(addr), "1|1|tcp|127.0.0.1:40123|grpc\n");
    }

    #[test]
    fn the_cookie_must_be_myshoes() {
        assert_eq!(check_cookie(env(&[])), Err(HandshakeError::NoCookie));
        assert_eq!(
            check_cookie(env(&[(MAGIC_COOKIE_KEY, "something-else")])),
            Err(HandshakeError::NoCookie)
        );
        assert_eq!(
            check_cookie(env(&[(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)])),
            Ok(())
        );
    }

    #[test]
    fn auto_mtls_is_refused() {
        let result = check_host(env(&[(
            "PLUGIN_CLIENT_CERT",
            "-----BEGIN CERTIFICATE-----",
        )]));
        assert_eq!(result, Err(HandshakeError::AutoMtls));
        assert!(result
            .expect_err("refused")
            .to_string()
            .contains("PLUGIN_CLIENT_CERT"));
    }

    #[test]
    fn protocol_versions_must_include_one() {
        assert_eq!(check_host(env(&[])), Ok(()));
        assert_eq!(
            check_host(env(&[("PLUGIN_PROTOCOL_VERSIONS", "1")])),
            Ok(())
        );
        assert_eq!(
            check_host(env(&[("PLUGIN_PROTOCOL_VERSIONS", "2, 1")])),
            Ok(())
        );
        assert_eq!(
            check_host(env(&[("PLUGIN_PROTOCOL_VERSIONS", "2,3")])),
            Err(HandshakeError::ProtocolVersion("2,3".into()))
        );
        assert_eq!(
            check_host(env(&[("PLUGIN_PROTOCOL_VERSIONS", "11")])),
            Err(HandshakeError::ProtocolVersion("11".into()))
        );
    }
}
