//! Shared helpers: a fake guest filesystem root, configs and config disks, and a tiny test
//! host notify endpoint that verifies signatures with the real [`NotifyVerifier`].

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use shoes_vz_guest_config::{
    write_image, ApiToken, GuestConfig, NotifyRequest, NotifyVerifier, OpenSshPrivateKey,
    FORMAT_VERSION, SIGNATURE_HEADER,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

pub const USER: &str = "runner";
pub const RUNNER_DIR: &str = "/home/runner/actions-runner";
/// Shape-valid OpenSSH private key text: the runner-agent installs it without parsing it.
pub const HOST_KEY_PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBtZXN0LWhvc3Qta2V5LWZvci1zaG9lcy12ei10ZXN0cw==\n-----END OPENSSH PRIVATE KEY-----\n";

pub fn public_key(tag: &str) -> String {
    format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{tag}")
}

/// A runner id in the host's format (32 hex digits).
pub fn runner_id(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

pub fn config(runner_id: &str, notify_url: &str, key_tag: &str) -> AnyResult<GuestConfig> {
    Ok(GuestConfig {
        version: FORMAT_VERSION,
        runner_id: runner_id.to_owned(),
        api_token: ApiToken::generate()?,
        notify_url: notify_url.to_owned(),
        ssh_user: USER.to_owned(),
        ssh_authorized_key: public_key(key_tag),
        ssh_host_key: OpenSshPrivateKey::new(HOST_KEY_PEM.to_owned())?,
        ssh_host_public_key: public_key("HostKey"),
        http_listen: "127.0.0.1:0".parse()?,
        runner_dir: PathBuf::from(RUNNER_DIR),
        host_time_ms: Some(shoes_vz_guest_config::unix_ms_now()),
    })
}

/// A fake guest: `root` has `/etc/passwd` naming the test's own uid/gid as `runner`, and
/// `/home/runner`; the config disk image lives beside it.
pub struct FakeGuest {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub image: PathBuf,
    pub config: GuestConfig,
}

impl FakeGuest {
    pub fn new(config: GuestConfig) -> AnyResult<FakeGuest> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::create_dir_all(root.join("home/runner"))?;
        let uid = nix::unistd::geteuid();
        let gid = nix::unistd::getegid();
        std::fs::write(
            root.join("etc/passwd"),
            format!("root:x:0:0:root:/root:/bin/sh\n{USER}:x:{uid}:{gid}:GitHub runner:/home/runner:/bin/sh\n"),
        )?;
        let image = dir.path().join("config.img");
        write_image(&image, &config)?;
        Ok(FakeGuest {
            dir,
            root,
            image,
            config,
        })
    }

    /// `path` (absolute, guest view) inside the fake root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

struct HostState {
    verifier: Mutex<NotifyVerifier>,
    accepted: mpsc::UnboundedSender<NotifyRequest>,
    refused: AtomicUsize,
    fail_first: AtomicUsize,
}

/// The host side of the notify, as small as it can be: verify, record, answer.
pub struct TestHost {
    pub addr: SocketAddr,
    state: Arc<HostState>,
    accepted: mpsc::UnboundedReceiver<NotifyRequest>,
    task: JoinHandle<()>,
}

impl TestHost {
    pub async fn start() -> AnyResult<TestHost> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(HostState {
            verifier: Mutex::new(NotifyVerifier::default()),
            accepted: tx,
            refused: AtomicUsize::new(0),
            fail_first: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/notify", post(notify))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(TestHost {
            addr,
            state,
            accepted: rx,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    pub fn register(&self, runner_id: &str, token: &ApiToken) {
        self.state
            .verifier
            .lock()
            .expect("verifier lock")
            .register(runner_id, token.clone());
    }

    /// Answers 503 to the next `n` notifies before verifying any.
    pub fn fail_first(&self, n: usize) {
        self.state.fail_first.store(n, Ordering::SeqCst);
    }

    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    pub async fn next_notify(&mut self) -> AnyResult<NotifyRequest> {
        tokio::time::timeout(Duration::from_secs(20), self.accepted.recv())
            .await
            .map_err(|_| "no notify accepted within 20 s")?
            .ok_or_else(|| "the test host stopped".into())
    }

    pub fn try_next_notify(&mut self) -> Option<NotifyRequest> {
        self.accepted.try_recv().ok()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn notify(
    State(state): State<Arc<HostState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if state
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "not yet".to_owned());
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    let verified = state
        .verifier
        .lock()
        .expect("verifier lock")
        .verify(&body, signature);
    match verified {
        Ok(request) => {
            let _ = state.accepted.send(request);
            (StatusCode::OK, "accepted".to_owned())
        }
        Err(err) => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            let status =
                StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            (status, err.to_string())
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a plain HTTP client builds")
}

pub fn mode(path: &Path) -> AnyResult<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o777)
}
