//! The real `shoes-vz-server` and `shoes-vz-agent` binaries as separate processes (config files,
//! tokens in the environment, logs in files), for tests of what only separate processes show:
//! kill -9, impostors, broken links.

use shoes_vz_cli::fleet_client::FleetClient;
use shoes_vz_protocol::client::ConnectOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SHOES_TOKEN: &str = "proc-shoes-token-0123456789";
pub const OPERATOR_TOKEN: &str = "proc-operator-token-0123456789";
pub const ENROLLMENT_TOKEN: &str = "proc-enrollment-token-0123456789";

/// The two binaries, built once per test binary in this test's profile (never a stale one).
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.ancestors().nth(2).map(Path::to_path_buf))
            .expect("target/<profile>");
        let release = profile_dir.ends_with("release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(&workspace).args([
            "build",
            "--quiet",
            "-p",
            "shoes-vz-server",
            "-p",
            "shoes-vz-agent",
        ]);
        if release {
            command.arg("--release");
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "cargo build of server and agent failed");
        (
            profile_dir.join("shoes-vz-server"),
            profile_dir.join("shoes-vz-agent"),
        )
    })
}

/// A port free right now on loopback (the kernel picks it; a race with another process is
/// possible but harmless in tests: the start then fails loudly).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    dir: PathBuf,
    starts: u32,
}

/// What a test may change in the server's config.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub agent_offline_after: Duration,
    pub heartbeat_interval: Duration,
    pub claim_grace: Duration,
    pub queue_wait: Duration,
    pub add_instance: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            agent_offline_after: Duration::from_secs(4),
            heartbeat_interval: Duration::from_secs(1),
            claim_grace: Duration::from_secs(5),
            queue_wait: Duration::from_secs(20),
            add_instance: Duration::from_secs(60),
        }
    }
}

impl ServerProcess {
    pub async fn start(dir: &Path, settings: &ServerSettings) -> ServerProcess {
        std::fs::create_dir_all(dir).expect("server dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            r#"listen = "{addr}"
metrics_listen = "{metrics}"
database_url = "sqlite://{db}?mode=rwc"
[timeouts]
add_instance = "{add}ms"
queue_wait = "{queue}ms"
claim_grace = "{grace}ms"
agent_offline_after = "{offline}ms"
heartbeat_interval = "{heartbeat}ms"
"#,
            db = dir.join("state.db").display(),
            add = settings.add_instance.as_millis(),
            queue = settings.queue_wait.as_millis(),
            grace = settings.claim_grace.as_millis(),
            offline = settings.agent_offline_after.as_millis(),
            heartbeat = settings.heartbeat_interval.as_millis(),
        );
        std::fs::write(dir.join("server.toml"), config).expect("server config");
        let mut server = ServerProcess {
            child: spawn_server(dir, 0),
            addr,
            metrics,
            dir: dir.to_path_buf(),
            starts: 1,
        };
        server.wait_listening().await;
        server
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the server never listened: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address and database.
    pub async fn restart(&mut self) {
        self.child = spawn_server(&self.dir, self.starts);
        self.starts += 1;
        self.wait_listening().await;
    }

    pub async fn client(&self) -> FleetClient {
        FleetClient::connect(
            &self.addr.to_string(),
            SHOES_TOKEN,
            OPERATOR_TOKEN,
            &ConnectOptions::default(),
        )
        .await
        .expect("client connects")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics);
        reqwest::get(&url)
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn log(&self) -> String {
        (0..self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("server-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_server(dir: &Path, start: u32) -> Child {
    let log = std::fs::File::create(dir.join(format!("server-{start}.log"))).expect("server log");
    Command::new(&binaries().0)
        .arg("--config")
        .arg(dir.join("server.toml"))
        .args(["--log-format", "json"])
        .env("SHOESVZ_TOKEN", SHOES_TOKEN)
        .env("SHOESVZ_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("SHOESVZ_AGENT_TOKEN", ENROLLMENT_TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start shoes-vz-server")
}

pub struct AgentProcess {
    child: Child,
    pub dir: PathBuf,
    server_url: String,
    starts: u32,
}

impl AgentProcess {
    /// An agent (test backend, `max_runners` slots) whose data lives in `dir`.
    pub fn start(dir: &Path, server_url: &str, max_runners: u32) -> AgentProcess {
        Self::start_with(dir, server_url, max_runners, Duration::from_millis(300))
    }

    /// The same, with test VMs that take `boot_delay` to answer SSH.
    pub fn start_with(
        dir: &Path,
        server_url: &str,
        max_runners: u32,
        boot_delay: Duration,
    ) -> AgentProcess {
        std::fs::create_dir_all(dir).expect("agent dir");
        let templates = dir.join("templates");
        shoes_vz_agent::template::ensure_test_template(&templates, "test-default")
            .expect("test template");
        let config = format!(
            r#"server_url = "{server_url}"
data_dir = "{data}"
templates_dir = "{templates}"
runners_dir = "{runners}"
backend = "test"
clone_mode = "copy"
guest_status_interval = "200ms"
[capacity]
max_runners = {max_runners}
cpu_cores = 256
memory_mib = 1048576
[test_backend]
boot_delay = "{boot_delay}ms"
[timeouts]
boot_to_ip = "30s"
boot_to_ssh = "30s"
[reconnect]
initial_backoff = "100ms"
max_backoff = "1s"
server_silence = "4s"
"#,
            data = dir.display(),
            templates = templates.display(),
            runners = dir.join("runners").display(),
            boot_delay = boot_delay.as_millis(),
        );
        std::fs::write(dir.join("agent.toml"), config).expect("agent config");
        AgentProcess {
            child: spawn_agent(dir, 0),
            dir: dir.to_path_buf(),
            server_url: server_url.to_string(),
            starts: 1,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the agent again on the same data (as launchd or systemd would after a crash).
    pub fn restart(&mut self) {
        self.child = spawn_agent(&self.dir, self.starts);
        self.starts += 1;
    }

    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    pub fn agent_id(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent-id"))
            .map(|id| id.trim().to_string())
            .unwrap_or_default()
    }

    pub fn runners_dir(&self) -> PathBuf {
        self.dir.join("runners")
    }

    /// `runner-state.json`'s view of the server link.
    pub fn connected(&self) -> Option<bool> {
        let text = std::fs::read_to_string(self.dir.join("runner-state.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["server"]["connected"].as_bool()
    }

    pub fn log(&self) -> String {
        (0..self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("agent-{n}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_agent(dir: &Path, start: u32) -> Child {
    let log = std::fs::File::create(dir.join(format!("agent-{start}.log"))).expect("agent log");
    Command::new(&binaries().1)
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args(["--log-format", "json"])
        .env("SHOESVZ_AGENT_TOKEN", ENROLLMENT_TOKEN)
        .env_remove("SHOESVZ_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start shoes-vz-agent")
}

/// Waits (polling, test side only) until `check` holds, or fails with `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agents the server knows: (agent id, status).
pub async fn agent_statuses(client: &mut FleetClient) -> Vec<(String, String)> {
    client
        .operator
        .list_agents(shoes_vz_protocol::operator::v1::ListAgentsRequest {})
        .await
        .expect("list agents")
        .into_inner()
        .agents
        .into_iter()
        .map(|a| (a.agent_id, a.status))
        .collect()
}

pub async fn agent_status(client: &mut FleetClient, agent_id: &str) -> Option<String> {
    agent_statuses(client)
        .await
        .into_iter()
        .find(|(id, _)| id == agent_id)
        .map(|(_, status)| status)
}
