//! `shoes-vz-standin-runner`: `Runner.Listener`, `Runner.Worker` or `node` by the name it is
//! started as; see the library docs.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Result<Vec<String>, _> = std::env::args_os().map(|a| a.into_string()).collect();
    let Ok(argv) = argv else {
        eprintln!("shoes-vz-standin-runner: arguments must be UTF-8");
        return ExitCode::from(1);
    };
    ExitCode::from(shoes_vz_standin_runner::cli::dispatch(&argv))
}
