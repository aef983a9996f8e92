//! The real `shoes-vz-server` as its own process for the bench: a config file in the run's
//! temp dir, tokens and the database URL in its environment (never argv), loopback ports
//! chosen free by the kernel, JSON logs in files. Restarts reuse the ports and the database.

use super::proc_stats::{self, ProcSample};
use super::scrape::MetricsClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long the server may take to listen, and to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no shoes-vz-server binary at {0}; build it with `cargo build --release -p shoes-vz-server` (or -p shoes-vz-server without --release for a debug shoes-vz) or pass --server-bin")]
    Missing(PathBuf),
    #[error("cannot pick a free loopback port")]
    Port(#[source] std::io::Error),
    #[error("cannot write the server's files in {dir}")]
    Files {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {bin}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server exited with {status} before it listened; its log ends with:\n{log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error(
        "the server did not answer /metrics within {START_TIMEOUT:?}; its log ends with:\n{log}"
    )]
    NotReady { log: String },
    #[error("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM and was killed; its log ends with:\n{log}")]
    NoStop { log: String },
    #[error("cannot signal the server")]
    Signal(#[source] nix::Error),
    #[error(transparent)]
    Metrics(#[from] super::scrape::ScrapeError),
}

/// The tokens of one run: random, handed to the server through its environment.
pub struct Tokens {
    pub shoes: String,
    pub operator: String,
    pub enrollment: String,
}

impl Tokens {
    pub fn random() -> Tokens {
        let token = || uuid::Uuid::new_v4().simple().to_string();
        Tokens {
            shoes: token(),
            operator: token(),
            enrollment: token(),
        }
    }
}

/// Everything that stays the same across the server's restarts.
pub struct ServerSetup {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub database_url: String,
    pub tokens: Tokens,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl ServerSetup {
    pub fn new(
        bin: PathBuf,
        dir: &Path,
        database_url: String,
        tokens: Tokens,
    ) -> Result<ServerSetup, ServerError> {
        if !bin.is_file() {
            return Err(ServerError::Missing(bin));
        }
        let config =
            "# Written by `shoes-vz bench fleet`: server defaults, loopback only; tokens and\n\
                      # the database URL come from the environment, ports from flags.\n";
        std::fs::write(dir.join("server.toml"), config).map_err(|source| ServerError::Files {
            dir: dir.to_path_buf(),
            source,
        })?;
        let [grpc, metrics] = free_ports()?;
        Ok(ServerSetup {
            bin,
            dir: dir.to_path_buf(),
            database_url,
            tokens,
            grpc,
            metrics,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// Two loopback addresses whose ports are free right now (another process could take one
/// before the server binds it; the start then fails and says so). Both are held until both
/// are known, so they differ.
fn free_ports() -> Result<[SocketAddr; 2], ServerError> {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").map_err(ServerError::Port);
    let (first, second) = (bind()?, bind()?);
    Ok([
        first.local_addr().map_err(ServerError::Port)?,
        second.local_addr().map_err(ServerError::Port)?,
    ])
}

pub struct ServerProcess {
    child: Child,
    pid: u32,
    starts: u32,
    metrics: MetricsClient,
}

impl ServerProcess {
    /// Starts the server and waits until `/metrics` answers; returns how long that took.
    pub async fn start(setup: &ServerSetup) -> Result<(ServerProcess, Duration), ServerError> {
        let metrics = MetricsClient::new(setup.metrics)?;
        let mut server = ServerProcess {
            child: spawn(setup, 0)?,
            pid: 0,
            starts: 1,
            metrics,
        };
        let took = server.wait_ready(setup).await?;
        Ok((server, took))
    }

    pub fn metrics(&self) -> &MetricsClient {
        &self.metrics
    }

    /// The server's CPU time and memory now.
    pub fn sample(&self) -> Result<ProcSample, proc_stats::ProcError> {
        proc_stats::sample(Some(self.pid))
    }

    async fn wait_ready(&mut self, setup: &ServerSetup) -> Result<Duration, ServerError> {
        let started = Instant::now();
        self.pid = self.child.id().unwrap_or_default();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Exited {
                    status,
                    log: self.log_tail(setup),
                });
            }
            if self.metrics.gauges().await.is_ok() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(ServerError::NotReady {
                    log: self.log_tail(setup),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM and wait for the exit (the server flushes its store writes); returns how long
    /// it took. A server that does not stop in time is killed and the stop is an error.
    pub async fn stop(&mut self, setup: &ServerSetup) -> Result<Duration, ServerError> {
        let started = Instant::now();
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(0));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
                .map_err(ServerError::Signal)?;
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(_) => Ok(started.elapsed()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(ServerError::NoStop {
                    log: self.log_tail(setup),
                })
            }
        }
    }

    /// Starts the server again on the same ports and database; returns how long until it
    /// answered `/metrics`.
    pub async fn restart(&mut self, setup: &ServerSetup) -> Result<Duration, ServerError> {
        self.child = spawn(setup, self.starts)?;
        self.starts += 1;
        self.wait_ready(setup).await
    }

    /// Whether the server died on its own (then the bench stops with its log).
    pub fn check_alive(&mut self, setup: &ServerSetup) -> Result<(), ServerError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ServerError::Exited {
                status,
                log: self.log_tail(setup),
            }),
            _ => Ok(()),
        }
    }

    /// The last lines of the current start's log (the server logs no secrets).
    pub fn log_tail(&self, setup: &ServerSetup) -> String {
        let path = log_path(setup, self.starts.saturating_sub(1));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("{tail}\n(full log: {})", path.display())
    }
}

fn log_path(setup: &ServerSetup, start: u32) -> PathBuf {
    setup.dir.join(format!("server-{start}.log"))
}

fn spawn(setup: &ServerSetup, start: u32) -> Result<Child, ServerError> {
    let files = |source| ServerError::Files {
        dir: setup.dir.clone(),
        source,
    };
    let log = std::fs::File::create(log_path(setup, start)).map_err(files)?;
    Command::new(&setup.bin)
        .arg("--config")
        .arg(setup.dir.join("server.toml"))
        .args(["--listen", &setup.grpc.to_string()])
        .args(["--metrics-listen", &setup.metrics.to_string()])
        .args(["--log-format", "json"])
        .env("SHOESVZ_DATABASE_URL", &setup.database_url)
        .env("SHOESVZ_TOKEN", &setup.tokens.shoes)
        .env("SHOESVZ_OPERATOR_TOKEN", &setup.tokens.operator)
        .env("SHOESVZ_AGENT_TOKEN", &setup.tokens.enrollment)
        // The bench's own environment must not reconfigure the server under test.
        .env_remove("SHOESVZ_SERVER_CONFIG")
        .env_remove("SHOESVZ_TLS_CERT")
        .env_remove("SHOESVZ_TLS_KEY")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ServerError::Spawn {
            bin: setup.bin.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("shoes-vz-server");
        let error = ServerSetup::new(missing, dir.path(), String::new(), Tokens::random())
            .err()
            .expect("no binary there");
        let message = error.to_string();
        assert!(
            message.contains("cargo build --release -p shoes-vz-server")
                && message.contains("--server-bin"),
            "{message}"
        );
    }

    #[test]
    fn the_two_ports_differ_and_tokens_are_fresh() {
        let [grpc, metrics] = free_ports().expect("ports");
        assert_ne!(grpc.port(), metrics.port());
        let (a, b) = (Tokens::random(), Tokens::random());
        assert_ne!(a.shoes, b.shoes);
        assert!(a.shoes.len() >= 16 && a.enrollment.len() >= 16 && a.operator.len() >= 16);
        assert!(a.shoes != a.enrollment && a.enrollment != a.operator);
    }
}
