//! `shoes-vz-runner-agent`: see the library's docs and `docs/runner-agent.md`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use shoes_vz_runner_agent::cli::Cli;
use shoes_vz_runner_agent::{run_once, RunningAgent};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
    shoes_vz_telemetry::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "could not start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = cli.options();
    if cli.once {
        let accepted = run_once(opts).await.context("runner-agent --once failed")?;
        info!(attempts = accepted.attempts, "notified; exiting (--once)");
        return Ok(());
    }
    let mut agent = RunningAgent::start(opts)
        .await
        .context("runner-agent could not start")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("could not watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; stopping"),
        _ = terminate.recv() => info!("SIGTERM; stopping"),
        () = agent.wait() => anyhow::bail!("the HTTP server stopped unexpectedly"),
    }
    agent.shutdown().await;
    Ok(())
}
