//! `externals/node20/bin/node <dir>/RunnerService.js [args]`: a stand-in for node running
//! **myshoes' replacement** of `bin/RunnerService.js` (fixture main.sh lines 203-295).
//!
//! Debian's nodejs does not fit the RAM-rooted test guest (libnode and libicu alone are
//! ~80 MB installed), and this is the only script the runner's node runs under myshoes, so
//! the stand-in does what that script does instead of interpreting it:
//! - a missing script fails as node does (`Error: Cannot find module '<path>'`, exit 1);
//! - it spawns `<dir of the script>/../bin/Runner.Listener run --startuptype service [args]`
//!   (`interactive` as the first argument: `run [args after it]`), copies the listener's
//!   stdout and stderr to its stdout, and prints the script's own lines;
//! - listener exit code 0 or 1 stops it; any other code (or death by a signal, `null`)
//!   relaunches the listener after 5 s, with no limit;
//! - SIGINT or SIGTERM sends SIGINT to the listener and stops relaunching; node then exits 0
//!   once the listener has exited (or a pending 5 s wait has run out);
//! - a listener that cannot be started crashes it with an unhandled `'error'` event, exit 1.
//!
//! Not reproduced: any other JavaScript. The script's content is not read, so upstream's
//! own `RunnerService.js` (which also stops on code 5 and gives up after 10 retryable exits
//! in a row) gets myshoes' behaviour too.

use crate::record::{self, ProcessRecord};
use crate::signals::StopSignal;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// myshoes' RunnerService.js: `setTimeout(runService, 5000)`.
pub const RELAUNCH_DELAY: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

pub fn main(argv: &[String]) -> u8 {
    let program = argv.first().map(String::as_str).unwrap_or("node");
    let args = argv.get(1..).unwrap_or_default();
    let Some(script) = args.first() else {
        eprintln!("{program} (shoes-vz stand-in): give a script; the stand-in only hosts bin/RunnerService.js and has no REPL");
        return 9;
    };
    if script.starts_with('-') {
        eprintln!("{program}: bad option: {script}");
        return 9;
    }
    let script_path = absolute(Path::new(script));
    if !script_path.is_file() {
        cannot_find_module(&script_path);
        return 1;
    }
    // Node resolves the main module's real path; `__dirname` is its directory.
    let script_path = std::fs::canonicalize(&script_path).unwrap_or(script_path);
    let script_dir = script_path.parent().unwrap_or(Path::new("/"));
    // path.join(__dirname, '../bin/Runner.Listener')
    let root = script_dir.parent().unwrap_or(script_dir);
    let listener = root.join("bin").join("Runner.Listener");
    // Best effort: the record is for tests, the service must run without it.
    let _ = record::append(root, &ProcessRecord::current("node", argv));

    let stop = match StopSignal::install() {
        Ok(stop) => stop,
        Err(error) => {
            eprintln!("{program}: cannot handle signals: {error}");
            return 1;
        }
    };
    let script_args = &args[1..];
    let interactive = script_args.first().is_some_and(|a| a == "interactive");
    let listener_args: Vec<&str> = if interactive {
        std::iter::once("run")
            .chain(script_args[1..].iter().map(String::as_str))
            .collect()
    } else {
        ["run", "--startuptype", "service"]
            .into_iter()
            .chain(script_args.iter().map(String::as_str))
            .collect()
    };
    Service {
        listener,
        listener_args,
        interactive,
        stop,
        stopping: false,
    }
    .run()
}

struct Service<'a> {
    listener: PathBuf,
    listener_args: Vec<&'a str>,
    interactive: bool,
    stop: StopSignal,
    stopping: bool,
}

impl Service<'_> {
    fn run(mut self) -> u8 {
        let mut first = true;
        loop {
            if self.interactive {
                say("Starting Runner listener interactively");
            } else {
                say("Starting Runner listener with startup type: service");
            }
            let spawned = Command::new(&self.listener)
                .args(&self.listener_args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            say("Started listener process");
            if first {
                say("Started running service");
                first = false;
            }
            let mut child = match spawned {
                Ok(child) => child,
                Err(error) => {
                    unhandled_spawn_error(&self.listener, &self.listener_args, &error);
                    return 1;
                }
            };
            let status = self.wait_listener(&mut child);
            let code = status.and_then(|s| s.code());
            say(&format!(
                "Runner listener exited with error code {}",
                code.map_or_else(|| "null".to_string(), |c| c.to_string())
            ));
            match code {
                Some(0) => {
                    say("Runner listener exit with 0 return code, stop the service, no retry needed.");
                    self.stopping = true;
                }
                Some(1) => {
                    say("Runner listener exit with terminated error, stop the service, no retry needed.");
                    self.stopping = true;
                }
                Some(2) => say("Runner listener exit with retryable error, re-launch runner in 5 seconds."),
                Some(3) => say("Runner listener exit because of updating, re-launch runner in 5 seconds."),
                _ => say("Runner listener exit with undefined return code, re-launch runner in 5 seconds."),
            }
            if self.stopping {
                return 0;
            }
            // setTimeout(runService, 5000): node stays up until it fires, even when a signal
            // stops the service meanwhile (runService then does nothing).
            let deadline = Instant::now() + RELAUNCH_DELAY;
            while Instant::now() < deadline {
                if self.stop.take().is_some() {
                    self.graceful_shutdown(None);
                }
                std::thread::sleep(POLL);
            }
            if self.stopping {
                return 0;
            }
        }
    }

    /// Copies the listener's output until it exits; a stop signal is passed on as SIGINT.
    fn wait_listener(&mut self, child: &mut Child) -> Option<ExitStatus> {
        // Held open like node's stdin pipe, never written.
        let _stdin = child.stdin.take();
        let copiers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|source| std::thread::spawn(move || copy_to_stdout(source)))
        .collect();
        let status = loop {
            if self.stop.take().is_some() {
                self.graceful_shutdown(Some(child));
            }
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        // 'close' fires once the output is drained too.
        for copier in copiers {
            let _ = copier.join();
        }
        status
    }

    /// myshoes' `gracefulShutdown`: say so, stop relaunching, SIGINT to the listener (a
    /// listener that has already exited gets nothing).
    fn graceful_shutdown(&mut self, running: Option<&mut Child>) {
        say("Shutting down runner listener");
        self.stopping = true;
        say("Sending SIGINT to runner listener to stop");
        if let Some(child) = running {
            if let (Ok(None), Ok(pid)) = (child.try_wait(), i32::try_from(child.id())) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        }
    }
}

fn copy_to_stdout(mut source: Box<dyn Read + Send>) {
    let mut buf = [0u8; 8192];
    loop {
        match source.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut out = std::io::stdout().lock();
                // Keep draining even when our stdout is gone, so the listener never blocks.
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// `console.log`.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

fn cannot_find_module(path: &Path) {
    eprintln!(
        "node:internal/modules/cjs/loader:1228\n  throw err;\n  ^\n\nError: Cannot find module '{}'\n    at Module._resolveFilename (node:internal/modules/cjs/loader:1225:15) {{\n  code: 'MODULE_NOT_FOUND',\n  requireStack: []\n}}\n",
        path.display()
    );
}

fn unhandled_spawn_error(listener: &Path, args: &[&str], error: &std::io::Error) {
    let code = error
        .raw_os_error()
        .map(|n| format!("{:?}", nix::errno::Errno::from_raw(n)))
        .unwrap_or_else(|| "UNKNOWN".into());
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    eprintln!(
        "node:events:497\n      throw er; // Unhandled 'error' event\n      ^\n\nError: spawn {path} {code}\nEmitted 'error' event on ChildProcess instance\n  code: '{code}',\n  syscall: 'spawn {path}',\n  path: '{path}',\n  spawnargs: [ {args} ]\n}}\n",
        path = listener.display(),
        args = quoted.join(", ")
    );
}
