//! `bin/Runner.Listener`: `configure`, `run`, `remove`, `warmup`, `--version`, `--help`.
//!
//! Every invocation opens a `_diag/Runner_*.log` (upstream creates its trace in `Main`,
//! whatever the command) and appends a record to `_standin/processes.jsonl`.

use crate::args::CommandLine;
use crate::clock::UtcStamp;
use crate::diag::{self, DiagLog};
use crate::job::{self, JobSpec, TaskResult};
use crate::record::{self, ProcessRecord};
use crate::settings::{self, Registration, RunnerSettings};
use crate::signals::{Stop, StopSignal};
use crate::terminal::Terminal;
use crate::worker::WORKER_JOB_ENV;
use crate::RUNNER_VERSION;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `Constants.Runner.ReturnCode`.
pub const SUCCESS: u8 = 0;
pub const TERMINATED_ERROR: u8 = 1;

const POLL: Duration = Duration::from_millis(100);
/// How long a worker gets to end after the listener asks it to (then it is killed).
const WORKER_STOP_GRACE: Duration = Duration::from_secs(5);
const NOT_CONFIGURED: &str =
    "An error occurred: Not configured. Run config.(sh/cmd) to configure the runner.";

/// Runs the listener with `argv` (`argv[0]` first) for the runner tree at `root`.
pub fn main(root: &Path, argv: &[String]) -> u8 {
    let line = CommandLine::parse(argv.get(1..).unwrap_or_default());
    if line.flag("version") {
        println!("{RUNNER_VERSION}");
        return SUCCESS;
    }
    let page_bytes = diag::page_bytes_from_env("RUNNER_LOGSIZE");
    let diag = match DiagLog::open(&root.join("_diag"), "Runner", page_bytes) {
        Ok(diag) => diag,
        Err(error) => {
            eprintln!(
                "An error occurred: cannot write the runner's trace in {}: {error}",
                root.join("_diag").display()
            );
            return TERMINATED_ERROR;
        }
    };
    let mut term = Terminal::new(Some(diag));
    let record = ProcessRecord::current("Runner.Listener", argv);
    term.trace_info(
        "Runner",
        &format!(
            "Runner.Listener {RUNNER_VERSION} (shoes-vz stand-in), pid {}, uid {}, arguments: {}",
            record.pid,
            record.uid,
            record.argv.get(1..).unwrap_or_default().join(" ")
        ),
    );
    if let Err(error) = record::append(root, &record) {
        term.trace_info("Runner", &format!("cannot record this process: {error}"));
    }
    if let Some(warning) = line.unknowns_warning() {
        term.write_error(&warning);
    }
    if line.flag("help") {
        print_usage(&mut term);
        return SUCCESS;
    }
    if line.is_command("configure") {
        configure(&mut term, &line, root)
    } else if line.is_command("remove") {
        remove(&mut term, &line, root)
    } else if line.is_command("warmup") {
        SUCCESS
    } else if !settings::is_configured(root) {
        // Upstream loads the settings before it looks at the command.
        term.write_error(NOT_CONFIGURED);
        TERMINATED_ERROR
    } else if line.is_command("run") {
        run(&mut term, &line, root)
    } else {
        print_usage(&mut term);
        SUCCESS
    }
}

fn print_usage(term: &mut Terminal) {
    for text in [
        "Commands (shoes-vz stand-in for the GitHub Actions runner; no network):",
        " ./config.sh --unattended --url <url> --token <token> [--name <name>] [--labels <l1,l2>] [--ephemeral]",
        " ./config.sh remove [--local]",
        " ./run.sh                     Waits for a job dropped as _standin/job.json",
        " ./bin/Runner.Listener --version",
    ] {
        term.write_line(text);
    }
}

// ---- configure -------------------------------------------------------------------------

fn configure(term: &mut Terminal, line: &CommandLine, root: &Path) -> u8 {
    term.write_line("");
    term.write_line(&format!(
        "GitHub Actions runner {RUNNER_VERSION} (shoes-vz stand-in): self-hosted runner registration, offline"
    ));
    term.write_line("");
    if line.flag("generateserviceconfig") || line.flag("runasservice") {
        term.write_error(
            "Service configuration is not reproduced by the shoes-vz stand-in runner.",
        );
        return TERMINATED_ERROR;
    }
    if settings::is_configured(root) {
        term.write_error(
            "Cannot configure the runner because it is already configured. To reconfigure the runner, run 'config.cmd remove' or './config.sh remove' first.",
        );
        return TERMINATED_ERROR;
    }
    if !line.flag("unattended") {
        // Upstream prompts for what is missing; the stand-in has no prompts and fails as
        // `--unattended` would.
        term.trace_info(
            "Runner",
            "not --unattended: the stand-in does not prompt; missing values fail",
        );
    }

    term.section("Authentication");
    let Some(url) = line.arg("url").filter(|u| settings::is_valid_url(u)) else {
        return invalid_configuration(term, "url");
    };
    // Only whether a token was given matters: there is no service to check it with. It is
    // never printed, traced or written.
    if line.arg("token").is_none() {
        return invalid_configuration(term, "token");
    }
    term.write_line("");
    term.success("Connected to GitHub");

    term.section("Runner Registration");
    let name = line
        .arg("name")
        .or_else(machine_name)
        .unwrap_or_else(|| "myrunner".into());
    let labels = registered_labels(line);
    if let Err(error) = settings::write_rsa_params(root) {
        return failed(term, "write .credentials_rsaparams", &error);
    }
    term.write_line("");
    // Upstream sends the labels to the service and prints none; with no service, the
    // stand-in shows what it would have registered.
    let quoted: Vec<String> = labels.iter().map(|l| format!("'{l}'")).collect();
    term.write_line(&format!("Runner labels: {}", quoted.join(", ")));
    term.success("Runner successfully added");

    let registration = Registration {
        github_url: url,
        name,
        ephemeral: line.flag("ephemeral"),
        disable_update: line.flag("disableupdate"),
        work_folder: line.arg("work").unwrap_or_else(|| "_work".into()),
    };
    let runner_settings = RunnerSettings::registered(&registration);
    if let Err(error) = settings::write_credentials(root, &runner_settings) {
        return failed(term, "write .credentials", &error);
    }
    term.section("Runner settings");
    if let Err(error) = settings::write_settings(root, &runner_settings) {
        return failed(term, "write .runner", &error);
    }
    term.write_line("");
    term.success("Settings Saved.");
    term.write_line("");
    SUCCESS
}

fn invalid_configuration(term: &mut Terminal, arg: &str) -> u8 {
    term.write_error(&format!(
        "Invalid configuration provided for {arg}. Terminating unattended configuration."
    ));
    TERMINATED_ERROR
}

fn failed(term: &mut Terminal, action: &str, error: &std::io::Error) -> u8 {
    term.write_error(&format!("cannot {action}: {error}"));
    TERMINATED_ERROR
}

fn machine_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .filter(|n| !n.is_empty())
}

/// `self-hosted`, the OS and the architecture (unless `--no-default-labels`), then the
/// `--labels` ones; case-insensitively distinct (ConfigurationManager.cs:676-705).
pub fn registered_labels(line: &CommandLine) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    if !line.flag("no-default-labels") {
        labels.extend(["self-hosted", os_label(), arch_label()].map(String::from));
    }
    for label in line.arg("labels").unwrap_or_default().split(',') {
        let label = label.trim();
        if !label.is_empty() && !labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            labels.push(label.to_string());
        }
    }
    labels
}

/// `VarUtil.OS`.
fn os_label() -> &'static str {
    if cfg!(target_os = "macos") {
        "macOS"
    } else if cfg!(target_os = "windows") {
        "Windows"
    } else {
        "Linux"
    }
}

/// `VarUtil.OSArchitecture`.
fn arch_label() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "ARM64",
        "arm" => "ARM",
        "x86" => "X86",
        _ => "X64",
    }
}

// ---- remove ----------------------------------------------------------------------------

fn remove(term: &mut Terminal, line: &CommandLine, root: &Path) -> u8 {
    if line.flag("local") {
        return match settings::delete_local_config(root) {
            Ok(()) => SUCCESS,
            Err(error) => failed(term, "delete the local configuration", &error),
        };
    }
    term.section("Runner removal");
    if !settings::is_configured(root) {
        term.write_error(NOT_CONFIGURED);
        return TERMINATED_ERROR;
    }
    if let Err(error) = settings::delete_local_config(root) {
        return failed(term, "delete the local configuration", &error);
    }
    term.success("Runner removed successfully");
    term.success("Removed .credentials");
    term.success("Removed .runner");
    SUCCESS
}

// ---- run -------------------------------------------------------------------------------

fn run(term: &mut Terminal, line: &CommandLine, root: &Path) -> u8 {
    if line.arg("jitconfig").is_some() {
        term.write_error(
            "An error occurred: --jitconfig is not reproduced by the shoes-vz stand-in runner.",
        );
        return TERMINATED_ERROR;
    }
    let runner_settings = match RunnerSettings::load(root) {
        Ok(s) => s,
        Err(error) => {
            term.write_error(&format!("An error occurred: cannot read .runner: {error}"));
            return TERMINATED_ERROR;
        }
    };
    let stop = match StopSignal::install() {
        Ok(stop) => stop,
        Err(error) => {
            term.write_error(&format!(
                "An error occurred: cannot handle signals: {error}"
            ));
            return TERMINATED_ERROR;
        }
    };
    let mut auto_job = match std::env::var(job::AUTO_JOB_ENV) {
        Ok(text) if !text.trim().is_empty() => match JobSpec::parse(&text) {
            Ok(job) => Some(job),
            Err(error) => {
                term.write_error(&format!(
                    "An error occurred: {}: {error}",
                    job::AUTO_JOB_ENV
                ));
                return TERMINATED_ERROR;
            }
        },
        _ => None,
    };
    let dot_env = read_dot_env(root);
    let return_result = is_true(std::env::var("ACTIONS_RUNNER_RETURN_JOB_RESULT_FOR_HOSTED").ok());
    let run_once = line.flag("once") || runner_settings.ephemeral || return_result;
    if line.flag("once") {
        term.write_line("Warning: '--once' is going to be deprecated in the future, please consider using '--ephemeral' during runner registration.");
    }

    term.write_line("");
    term.success("Connected to GitHub");
    term.write_line("");
    term.write_line(&format!("Current runner version: '{RUNNER_VERSION}'"));
    term.write_line(&format!(
        "{}: Listening for Jobs",
        UtcStamp::now().sortable()
    ));

    let mut serial = 0u32;
    let mut drop_box_failed = false;
    loop {
        if let Some(signal) = stop.received() {
            return shut_down(term, signal);
        }
        let job = match auto_job.take() {
            Some(job) => Some(job),
            None => {
                serial += 1;
                match job::take_dropped_job(root, serial) {
                    Ok(Some((taken, text))) => match JobSpec::parse(&text) {
                        Ok(job) => Some(job),
                        Err(error) => {
                            term.write_error(&format!(
                                "shoes-vz stand-in: ignoring the job in {}: {error}",
                                taken.display()
                            ));
                            None
                        }
                    },
                    Ok(None) => None,
                    Err(error) => {
                        if !drop_box_failed {
                            drop_box_failed = true;
                            term.write_error(&format!(
                                "shoes-vz stand-in: cannot take {}: {error}",
                                root.join(job::JOB_FILE).display()
                            ));
                        }
                        None
                    }
                }
            }
        };
        if let Some(job) = job {
            if let Some(code) = job.listener_exit {
                term.trace_info(
                    "Runner",
                    &format!("stand-in: exiting with code {code}, as the job asked"),
                );
                return code;
            }
            match run_job(term, root, &job, &dot_env, &stop) {
                JobOutcome::Completed(result) if run_once => {
                    if runner_settings.ephemeral {
                        term.trace_info(
                            "Runner",
                            "ephemeral runner: deleting the local configuration",
                        );
                        if let Err(error) = settings::delete_local_config(root) {
                            term.write_error(&format!(
                                "cannot delete the local configuration: {error}"
                            ));
                        }
                    }
                    return if return_result {
                        result.return_code()
                    } else {
                        SUCCESS
                    };
                }
                JobOutcome::Completed(_) => {}
                JobOutcome::ShutDown => return SUCCESS,
            }
        }
        std::thread::sleep(POLL);
    }
}

fn shut_down(term: &mut Terminal, signal: Stop) -> u8 {
    // Ctrl-C (SIGINT) prints "Exiting..." (CtrlCHandler); SIGTERM unloads quietly.
    if signal == Stop::Interrupt {
        term.write_line("Exiting...");
    }
    term.trace_info("Runner", "Runner execution been cancelled.");
    SUCCESS
}

enum JobOutcome {
    Completed(TaskResult),
    ShutDown,
}

fn run_job(
    term: &mut Terminal,
    root: &Path,
    job: &JobSpec,
    dot_env: &[(String, String)],
    stop: &StopSignal,
) -> JobOutcome {
    term.write_line(&format!(
        "{}: Running job: {}",
        UtcStamp::now().sortable(),
        job.name
    ));
    let result = match spawn_worker(root, job, dot_env) {
        Ok(mut worker) => match wait_worker(&mut worker, stop) {
            WorkerEnd::Exited(code) => TaskResult::from_return_code(code),
            WorkerEnd::Stopped(signal) => {
                if signal == Stop::Interrupt {
                    term.write_line("Exiting...");
                }
                term.write_line(&format!(
                    "{}: Job {} completed with result: {}",
                    UtcStamp::now().sortable(),
                    job.name,
                    TaskResult::Canceled
                ));
                return JobOutcome::ShutDown;
            }
        },
        Err(error) => {
            term.write_error(&format!("cannot start Runner.Worker: {error}"));
            TaskResult::Failed
        }
    };
    term.write_line(&format!(
        "{}: Job {} completed with result: {result}",
        UtcStamp::now().sortable(),
        job.name
    ));
    JobOutcome::Completed(result)
}

/// `bin/Runner.Worker spawnclient <pipeOut> <pipeIn>` by absolute path with cwd `bin/`, as
/// JobDispatcher.cs:474-480 starts it. The stand-in passes the job in the environment; the
/// two handle arguments are placeholders.
fn spawn_worker(
    root: &Path,
    job: &JobSpec,
    dot_env: &[(String, String)],
) -> std::io::Result<Child> {
    let bin = root.join("bin");
    let spec = serde_json::to_string(job).map_err(std::io::Error::other)?;
    Command::new(bin.join("Runner.Worker"))
        .args(["spawnclient", "3", "4"])
        .current_dir(&bin)
        .envs(dot_env.iter().map(|(k, v)| (k, v)))
        .env(WORKER_JOB_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

enum WorkerEnd {
    Exited(Option<i32>),
    Stopped(Stop),
}

fn wait_worker(worker: &mut Child, stop: &StopSignal) -> WorkerEnd {
    loop {
        if let Some(signal) = stop.received() {
            end_worker(worker);
            return WorkerEnd::Stopped(signal);
        }
        match worker.try_wait() {
            Ok(Some(status)) => return WorkerEnd::Exited(status.code()),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => {
                end_worker(worker);
                return WorkerEnd::Exited(None);
            }
        }
    }
}

/// Asks the worker to cancel (SIGINT), then kills it after [`WORKER_STOP_GRACE`].
fn end_worker(worker: &mut Child) {
    if let Ok(pid) = i32::try_from(worker.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let deadline = Instant::now() + WORKER_STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = worker.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = worker.kill();
    let _ = worker.wait();
}

/// `.env` lines `KEY=VALUE` (the listener loads them at start: Listener Program.cs:172-199).
fn read_dot_env(root: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(root.join(".env")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// `StringUtil.ConvertToBoolean`.
fn is_true(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("$true")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_defaults_then_given_ones_without_duplicates() {
        let line = CommandLine::parse(&[
            "configure",
            "--labels",
            "myshoes,Dependabot,,linux,dependabot",
        ]);
        let labels = registered_labels(&line);
        assert_eq!(labels[0], "self-hosted");
        assert_eq!(&labels[3..], ["myshoes", "Dependabot"]);
        let bare = CommandLine::parse(&["configure", "--no-default-labels", "--labels", "a"]);
        assert_eq!(registered_labels(&bare), ["a"]);
    }

    #[test]
    fn dot_env_and_booleans_parse_like_upstream() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        std::fs::write(
            root.path().join(".env"),
            "LANG=C.UTF-8\n=bad\nEMPTY=\nnoequals\n",
        )?;
        assert_eq!(
            read_dot_env(root.path()),
            [
                ("LANG".to_string(), "C.UTF-8".to_string()),
                ("EMPTY".to_string(), String::new())
            ]
        );
        assert!(is_true(Some("True".into())) && is_true(Some("1".into())));
        assert!(!is_true(Some("yes".into())) && !is_true(None));
        Ok(())
    }
}
