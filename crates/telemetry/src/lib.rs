//! What every shoes-vz binary does at its edge: logging (tracing to stderr, pretty or JSON
//! lines, filtered by `RUST_LOG`, default `info`), errors as one line of text with their causes,
//! reading its TOML config, waiting for a stop signal.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `error: cause: cause…` on one line, for errors that travel as text (gRPC statuses, reports,
/// log fields).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Installs the global subscriber; a second call is a no-op (tests start several components).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Reads a binary's TOML config file, or its defaults when no file is given.
pub fn load_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Waits for SIGINT or SIGTERM (how launchd, systemd and operators stop a daemon).
pub async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot save the runner")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_on_the_line() {
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(
            error_chain(&error),
            "cannot save the runner: permission denied"
        );
    }
}
