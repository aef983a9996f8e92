//! The stand-in runner end to end on this host: a laid-out tree, `config.sh`, then the
//! listener through `run.sh` or through `bin/runsvc.sh` → node (myshoes' way), a dropped
//! job, and the files, lines, processes and exit codes that must follow. Runs as uid 65534
//! through `setpriv` when the tests run as root (the root refusal is tested as root).

mod common;

use common::*;
use nix::sys::signal::Signal;
use shoes_vz_standin_runner::record::{self, ProcessRecord};
use std::time::Duration;

fn prerequisites_missing() -> bool {
    if setpriv_missing() {
        skip(
            "setpriv is not installed (util-linux); the tests run the runner as uid 65534 with it",
        );
        return true;
    }
    false
}

fn records(tree: &Tree, program: &str) -> Vec<ProcessRecord> {
    record::read_all(&tree.root)
        .expect("records")
        .into_iter()
        .filter(|r| r.program == program)
        .collect()
}

#[test]
fn config_sh_refuses_root_unless_allowed() {
    if !is_root() {
        skip("the root refusal needs the tests to run as root");
        return;
    }
    let tree = Tree::new();
    let output = std::process::Command::new("./config.sh")
        .args([
            "--unattended",
            "--url",
            "https://github.com/o",
            "--token",
            TOKEN,
        ])
        .current_dir(&tree.root)
        .env_remove("RUNNER_ALLOW_RUNASROOT")
        .output()
        .expect("config.sh");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "Must not run with sudo\n"
    );
    assert!(!tree.root.join(".runner").exists());
    assert!(!tree.root.join(".path").exists(), "refused before env.sh");

    let allowed = std::process::Command::new("./config.sh")
        .args([
            "--unattended",
            "--url",
            "https://github.com/o",
            "--token",
            TOKEN,
        ])
        .current_dir(&tree.root)
        .env("RUNNER_ALLOW_RUNASROOT", "1")
        .output()
        .expect("config.sh");
    assert_eq!(allowed.status.code(), Some(0), "{allowed:?}");
    assert!(tree.root.join(".runner").is_file());
}

#[test]
fn configure_errors_and_run_before_configure_exit_1_with_upstream_messages() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    let run = tree
        .command("./bin/Runner.Listener", &["run"])
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains(
        "An error occurred: Not configured. Run config.(sh/cmd) to configure the runner."
    ));

    let no_token = tree
        .command(
            "./config.sh",
            &["--unattended", "--url", "https://github.com/o"],
        )
        .output()
        .expect("config.sh");
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains(
        "Invalid configuration provided for token. Terminating unattended configuration."
    ));
    let bad_url = tree
        .command(
            "./config.sh",
            &["--unattended", "--url", "not-a-url", "--token", TOKEN],
        )
        .output()
        .expect("config.sh");
    assert_eq!(bad_url.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_url.stderr)
        .contains("Invalid configuration provided for url."));
    assert!(!tree.root.join(".runner").exists());

    let (status, stdout, stderr) = tree.configure();
    assert!(status.success(), "{stdout}{stderr}");
    let again = tree.configure();
    assert_eq!(again.0.code(), Some(1));
    assert!(again
        .2
        .contains("Cannot configure the runner because it is already configured."));
    for text in [&stdout, &stderr, &again.1, &again.2] {
        assert!(!text.contains(TOKEN));
    }
    tree.assert_nowhere(TOKEN);
}

#[test]
fn config_then_run_sh_runs_one_ephemeral_job_and_cleans_up() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    let (status, stdout, stderr) = tree.configure();
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert_in_order(
        &stdout,
        &[
            "√ Connected to GitHub",
            "'self-hosted', 'Linux', ",
            "'myshoes', 'dependabot'",
            "√ Runner successfully added",
            "√ Settings Saved.",
        ],
    );
    let dot_runner = std::fs::read(tree.root.join(".runner")).expect(".runner");
    assert!(dot_runner.starts_with("\u{feff}{\n  \"agentId\": ".as_bytes()));
    let text = String::from_utf8_lossy(&dot_runner);
    assert!(text.contains("\n  \"ephemeral\": true,\n"), "{text}");
    assert!(text.contains("\n  \"gitHubUrl\": \"https://github.com/example-org\",\n"));
    assert!(text.contains("\n  \"agentName\": \"myshoes-test\",\n"));
    assert!(tree.root.join(".credentials").is_file());
    assert!(tree.root.join(".path").is_file());
    assert_eq!(
        std::fs::read_to_string(tree.root.join(".env")).expect(".env"),
        "LANG=C.UTF-8\n"
    );

    let mut run = tree.spawn(tree.command("./run.sh", &[]), "run");
    wait_for("Listening for Jobs", TIMEOUT, || {
        tree.runner_logs().contains(": Listening for Jobs")
    });
    tree.drop_job(r#"{"name": "lint", "seconds": 0.5, "result": "Failed"}"#);
    let status = wait_exit(&mut run, TIMEOUT);
    let out = tree.output_of("run");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            "√ Connected to GitHub",
            "Current runner version: '2.336.0'",
            "Z: Listening for Jobs",
            "Z: Running job: lint",
            "Z: Job lint completed with result: Failed",
            "Runner listener exit with 0 return code, stop the service, no retry needed.",
            "Exiting runner...",
        ],
    );
    assert_in_order(
        &tree.runner_logs(),
        &[
            " INFO Terminal] WRITE LINE: Current runner version: '2.336.0'",
            " INFO Terminal] WRITE LINE: 20",
            "Z: Listening for Jobs",
            "Z: Running job: lint",
            "Z: Job lint completed with result: Failed",
        ],
    );
    for gone in [".runner", ".credentials", ".credentials_rsaparams"] {
        assert!(
            !tree.root.join(gone).exists(),
            "{gone} left after the ephemeral job"
        );
    }
    for kept in [".env", ".path", "_diag", "run-helper.sh"] {
        assert!(tree.root.join(kept).exists(), "{kept}");
    }
    assert!(
        !tree.root.join("_standin/job.json").exists(),
        "the job was taken"
    );
    assert!(tree
        .diag_logs("Worker_")
        .contains("Job 'lint' completed with result: Failed"));

    let listener = records(&tree, "Runner.Listener");
    let run_record = listener
        .iter()
        .find(|r| r.argv.get(1).is_some_and(|a| a == "run"))
        .expect("the run listener recorded itself");
    assert_eq!(
        run_record.argv[0],
        tree.root.join("bin/Runner.Listener").display().to_string(),
        "run-helper starts the listener by absolute path"
    );
    let worker = records(&tree, "Runner.Worker");
    assert_eq!(worker.len(), 1);
    assert_eq!(worker[0].argv[1], "spawnclient");
    assert_eq!(worker[0].ppid, run_record.pid);
    let bin = std::fs::canonicalize(tree.root.join("bin")).expect("bin");
    assert_eq!(worker[0].cwd, bin.display().to_string());
    if is_root() {
        assert!(listener
            .iter()
            .chain(&worker)
            .all(|r| r.uid == UNPRIVILEGED));
    }
    assert!(!out.contains(TOKEN) && !stdout.contains(TOKEN));
    tree.assert_nowhere(TOKEN);
}

#[test]
fn runsvc_and_node_run_the_job_like_myshoes_service_wrapper() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    assert!(tree.configure().0.success());
    let mut service = tree.spawn(tree.command("./bin/runsvc.sh", &[]), "svc");
    wait_for("Listening for Jobs", TIMEOUT, || {
        tree.output_of("svc").contains(": Listening for Jobs")
    });
    let node = records(&tree, "node");
    assert_eq!(node.len(), 1);
    let root = std::fs::canonicalize(&tree.root).expect("root");
    assert_eq!(node[0].cwd, root.display().to_string());
    tree.drop_job(r#"{"name": "build", "seconds": 1, "result": "Succeeded"}"#);
    let status = wait_exit(&mut service, TIMEOUT);
    let out = tree.output_of("svc");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            ".path=",
            "Starting Runner listener with startup type: service",
            "Started listener process",
            "Started running service",
            "√ Connected to GitHub",
            "Z: Listening for Jobs",
            "Z: Running job: build",
            "Z: Job build completed with result: Succeeded",
            "Runner listener exited with error code 0",
            "Runner listener exit with 0 return code, stop the service, no retry needed.",
        ],
    );
    let listener = records(&tree, "Runner.Listener");
    let run = listener.last().expect("listener");
    assert_eq!(
        run.argv,
        [
            root.join("bin/Runner.Listener").display().to_string(),
            "run".into(),
            "--startuptype".into(),
            "service".into()
        ],
        "node spawns <script dir>/../bin/Runner.Listener by absolute path"
    );
    assert_eq!(run.ppid, node[0].pid);
    assert_eq!(run.cwd, root.display().to_string());
    assert!(!tree.root.join(".runner").exists());
    tree.assert_nowhere(TOKEN);
}

#[test]
fn node_relaunches_other_exit_codes_and_passes_sigterm_on_as_sigint() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    assert!(tree.configure().0.success());
    let mut service = tree.spawn(tree.command("./bin/runsvc.sh", &[]), "svc");
    wait_for("Listening for Jobs", TIMEOUT, || {
        tree.output_of("svc").contains(": Listening for Jobs")
    });
    tree.drop_job(r#"{"name": "restart", "listener_exit": 2}"#);
    wait_for("the relaunched listener", TIMEOUT, || {
        tree.output_of("svc")
            .matches(": Listening for Jobs")
            .count()
            == 2
    });
    // A second drop is not needed: SIGTERM to the service wrapper ends everything.
    signal(&service, Signal::SIGTERM);
    let status = wait_exit(&mut service, TIMEOUT);
    let out = tree.output_of("svc");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            "Started running service",
            "Z: Listening for Jobs",
            "Runner listener exited with error code 2",
            "Runner listener exit with retryable error, re-launch runner in 5 seconds.",
            "Starting Runner listener with startup type: service",
            "Z: Listening for Jobs",
            "Shutting down runner listener",
            "Sending SIGINT to runner listener to stop",
            "Exiting...",
            "Runner listener exited with error code 0",
            "Runner listener exit with 0 return code, stop the service, no retry needed.",
        ],
    );
    assert_eq!(out.matches("Started running service").count(), 1);
    assert_eq!(records(&tree, "node").len(), 1, "one node, two listeners");
    assert!(
        tree.root.join(".runner").exists(),
        "no job ran: still configured"
    );
}

#[test]
fn sigint_during_a_job_cancels_the_worker_and_exits_0() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    assert!(tree.configure().0.success());
    let mut listener = tree.spawn(tree.command("./bin/Runner.Listener", &["run"]), "listener");
    wait_for("Listening for Jobs", TIMEOUT, || {
        tree.output_of("listener").contains(": Listening for Jobs")
    });
    tree.drop_job(r#"{"name": "long", "seconds": 600}"#);
    wait_for("the worker", TIMEOUT, || {
        !records(&tree, "Runner.Worker").is_empty()
    });
    let worker = records(&tree, "Runner.Worker")[0].pid;
    signal(&listener, Signal::SIGINT);
    let status = wait_exit(&mut listener, Duration::from_secs(20));
    let out = tree.output_of("listener");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            "Z: Running job: long",
            "Exiting...",
            "Z: Job long completed with result: Canceled",
        ],
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{worker}")).exists()
            || std::fs::read_to_string(format!("/proc/{worker}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the worker was ended"
    );
    assert!(tree
        .diag_logs("Worker_")
        .contains("Job cancelled by a signal"));
    assert!(
        tree.root.join(".runner").exists(),
        "a cancelled run keeps its configuration"
    );
}

#[test]
fn the_auto_job_variable_runs_a_job_without_a_drop() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    assert!(tree.configure().0.success());
    let mut command = tree.command("./run.sh", &[]);
    command.env(
        shoes_vz_standin_runner::AUTO_JOB_ENV,
        r#"{"name": "bench", "seconds": 0, "result": "Succeeded"}"#,
    );
    let mut run = tree.spawn(command, "run");
    let status = wait_exit(&mut run, TIMEOUT);
    let out = tree.output_of("run");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_in_order(
        &out,
        &[
            "Z: Listening for Jobs",
            "Z: Running job: bench",
            "Z: Job bench completed with result: Succeeded",
        ],
    );
}

#[test]
fn node_without_its_script_fails_like_node() {
    if prerequisites_missing() {
        return;
    }
    let tree = Tree::new();
    let output = tree
        .command("./externals/node20/bin/node", &["./bin/Missing.js"])
        .output()
        .expect("node");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Error: Cannot find module '"), "{stderr}");
    assert!(stderr.contains("/bin/Missing.js'"), "{stderr}");
    assert!(stderr.contains("code: 'MODULE_NOT_FOUND'"), "{stderr}");
}
