//! `shoes-vz-plugin`: started by myshoes (go-plugin), never by hand. See the crate docs.

use shoes_vz_plugin::config::PluginConfig;
use shoes_vz_plugin::{handshake, logging, serve};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Run by hand: plain text for a person, before anything else happens.
    if let Err(error) = handshake::check_cookie(|key| std::env::var(key).ok()) {
        eprintln!("shoes-vz-plugin: {error}");
        return ExitCode::FAILURE;
    }
    // Started by a host: from here on every line on stderr is an hclog JSON line it can show.
    logging::init();
    if let Err(error) = handshake::check_host(|key| std::env::var(key).ok()) {
        tracing::error!("{error}");
        return ExitCode::FAILURE;
    }
    let config = match PluginConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
