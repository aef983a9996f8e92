//! A stand-in for the GitHub Actions runner 2.336.0, for tests and benchmarks that cannot
//! reach GitHub: one binary, `shoes-vz-standin-runner`, that is `Runner.Listener`,
//! `Runner.Worker` or `node` by the name it is started as (the runner-agent finds the
//! listener and the worker by their program path in `/proc/<pid>/cmdline`, so they must be
//! real programs with those names), and [`layout()`], which writes a runner tree like the
//! release tarball's. Facts and file:line references are in `shared/notes/actions-runner.md`
//! and `shared/notes/myshoes-setup-script.md`.
//!
//! # Reproduced
//! - Tree: `config.sh`, `env.sh`, `run.sh`, `run-helper.sh.template`, `bin/runsvc.sh` (+x),
//!   `bin/RunnerService.js`, `bin/Runner.Listener`, `bin/Runner.Worker`,
//!   `externals/node20/bin/node`; the scripts are this crate's own versions (`tree/`).
//! - `config.sh`: the root refusal (`Must not run with sudo`, exit 1, unless
//!   `RUNNER_ALLOW_RUNASROOT`), `.path` and `.env` from `env.sh`, then `Runner.Listener
//!   configure`.
//! - `configure`: upstream's argument parsing (flags, first value wins, case-insensitive,
//!   `ACTIONS_RUNNER_INPUT_*`, unknown options reported), exit 1 with upstream's message when
//!   already configured or when `--url`/`--token` is missing or the URL invalid; `.runner`
//!   (indented camelCase JSON with a BOM, defaults omitted), `.credentials`,
//!   `.credentials_rsaparams` (mode 600), the three `√` lines, exit 0. The token is never
//!   printed, traced or written anywhere.
//! - `run`: `Not configured` → exit 1; `.env` loaded for the worker; `_diag/Runner_*.log` in
//!   the trace format, rolled over past `RUNNER_LOGSIZE` MB (default 8); the console lines
//!   `√ Connected to GitHub`, `Current runner version: '2.336.0'`, `<time>: Listening for
//!   Jobs`, `<time>: Running job: <name>`, `<time>: Job <name> completed with result:
//!   <result>`; the worker started as `<root>/bin/Runner.Worker spawnclient …` with cwd
//!   `bin/`, its exit code 100 + result; after one job an ephemeral (or `--once`) runner
//!   deletes `.runner`, `.credentials` and `.credentials_rsaparams` (ephemeral only) and exits
//!   0 (or 100 + result with `ACTIONS_RUNNER_RETURN_JOB_RESULT_FOR_HOSTED`); a non-ephemeral
//!   one keeps listening; SIGINT (`Exiting...`) or SIGTERM → the worker is cancelled, exit 0.
//! - `run.sh`/`run-helper.sh` restart rules and `bin/runsvc.sh`'s signal relay.
//! - `node`: what node does running myshoes' `RunnerService.js` (see [`node`]).
//!
//! # Simulated (no GitHub)
//! - A job is "dispatched" by dropping `<root>/_standin/job.json` = `{"name": "build",
//!   "seconds": 12, "result": "Succeeded"}` (taken once, by renaming it), or by
//!   `SHOESVZ_STANDIN_AUTO_JOB` holding such JSON (run as soon as the listener listens).
//!   `"listener_exit": N` makes the listener exit with N instead (for restart rules).
//! - Registration ids, service URLs and the RSA key are made up (random bytes, not a key).
//! - Each stand-in process appends itself (user, cwd, argv with secrets masked) to
//!   `<root>/_standin/processes.jsonl`; `configure` also prints the labels it would register.
//!
//! # Not reproduced
//! Network, sessions, job messages and steps, `--jitconfig`, `--replace` and name clashes,
//! prompts (missing values fail as with `--unattended`), self-update (exit codes 3/4 only
//! through `listener_exit`), service installation (`svc.sh`), `.NET` dependency checks in
//! `config.sh`, log retention, JavaScript (the `node` stand-in never reads the script).
//!
//! # Layout
//! - [`cli`]: the multi-call entry ([`cli::dispatch`]) and the `layout` subcommand.
//! - [`listener`], [`worker`], [`node`]: the three programs.
//! - [`args`]: the listener's command line; [`settings`]: `.runner` and credentials;
//!   [`job`]: simulated jobs and results; [`diag`], [`terminal`], [`clock`]: `_diag` traces and
//!   console lines; [`signals`]: SIGINT/SIGTERM; [`record`]: `_standin/processes.jsonl`.
//! - [`layout`](mod@layout): the runner tree (scripts in `tree/`).
//! - [`myshoes_fixture`]: myshoes' exact setup script with a token substituted.

pub mod args;
pub mod cli;
pub mod clock;
pub mod diag;
pub mod job;
pub mod layout;
pub mod listener;
pub mod myshoes_fixture;
pub mod node;
pub mod record;
pub mod settings;
pub mod signals;
pub mod terminal;
pub mod worker;

pub use job::{JobSpec, TaskResult, AUTO_JOB_ENV, JOB_FILE};
pub use layout::{layout, BinaryInstall, LayoutOptions};

use std::path::{Path, PathBuf};

/// The runner version the stand-in claims (actions/runner `src/runnerversion`).
pub const RUNNER_VERSION: &str = "2.336.0";
/// The binary's own name.
pub const BINARY_NAME: &str = "shoes-vz-standin-runner";
/// Environment variable with the binary's path, for [`find_binary`].
pub const BINARY_ENV: &str = "SHOESVZ_STANDIN_RUNNER";

/// The stand-in binary of this workspace, if built: `SHOESVZ_STANDIN_RUNNER`, else next to
/// the running program (or its parent, for test binaries in `target/*/deps`), else
/// `target/release` then `target/debug` under the current directory.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        return Some(path.into());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(BINARY_NAME));
        }
    }
    for profile in ["release", "debug"] {
        candidates.push(Path::new("target").join(profile).join(BINARY_NAME));
    }
    candidates.into_iter().find(|p| p.is_file())
}
