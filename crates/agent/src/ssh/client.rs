//! Client side: wait for a guest's sshd, then run scripts on it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::SshError;
use crate::error_chain;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Comfortably above the deliberate delay sshd (and russh) add before rejecting auth (1 s).
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// A fresh guest may take a while to fork its first shell.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_OUTPUT_LIMIT: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Bounds the polite goodbyes (channel close, disconnect) so a dead peer cannot stall us.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// Keepalives keep a quiet but healthy session open and notice a guest that vanished.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_MAX: usize = 3;
/// Backstop that ends russh's background task if a peer stalls mid-handshake, after our
/// own handshake timeout has given up on it (keepalives only start after auth).
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a guest's sshd is and how to prove both sides' identities.
#[derive(Clone)]
pub struct SshTarget {
    pub addr: SocketAddr,
    pub user: String,
    pub client_key: Arc<PrivateKey>,
    /// The only host key accepted; anything else is a different machine.
    pub expected_host_key: PublicKey,
}

impl fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Fingerprints only: the private key must never reach a log.
        f.debug_struct("SshTarget")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("client_key", &fingerprint(self.client_key.public_key()))
            .field("expected_host_key", &fingerprint(&self.expected_host_key))
            .finish()
    }
}

/// What a script left behind. `stdout` and `stderr` hold at most the requested limit each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutput {
    /// `None` if the guest reported no status (e.g. the command was killed by a signal).
    pub exit_status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether output beyond the limit was dropped from either stream.
    pub truncated: bool,
}

/// An authenticated SSH connection to a guest, reusable for several scripts.
pub struct SshSession {
    handle: Handle<ClientHandler>,
    addr: SocketAddr,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Connects to `target` until its sshd presents the expected host key, accepts our key and
/// runs `true`, retrying transient failures with backoff for up to `overall`.
///
/// A wrong host key or a rejected key fails at once: the guest is up but is not the VM
/// we provisioned, and waiting will not change that.
pub async fn wait_ready(target: &SshTarget, overall: Duration) -> Result<SshSession, SshError> {
    let started = Instant::now();
    let deadline = started + overall;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts: u32 = 0;
    let mut last_error: Option<SshError> = None;
    loop {
        attempts += 1;
        let err = match attempt(target, deadline).await {
            Ok(session) => {
                debug!(addr = %target.addr, attempts, waited = ?started.elapsed(), "guest ssh is ready");
                return Ok(session);
            }
            Err(err) if err.is_permanent() => return Err(err),
            Err(err) => err,
        };
        // An attempt cut short by the deadline says less than the failure before it.
        let cut_short = Instant::now() >= deadline && matches!(err, SshError::StepTimeout { .. });
        if !(cut_short && last_error.is_some()) {
            debug!(addr = %target.addr, attempts, error = %error_chain(&err), "guest ssh not ready yet");
            last_error = Some(err);
        }
        let now = Instant::now();
        if now < deadline {
            tokio::time::sleep_until(deadline.min(now + backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(SshError::NotReady {
                addr: target.addr,
                waited: now.duration_since(started),
                last_error: last_error
                    .as_ref()
                    .map_or_else(|| "no attempt was made".to_owned(), |e| error_chain(e)),
            });
        }
    }
}

/// One connection attempt; every step is bounded by its own timeout and by `deadline`.
async fn attempt(target: &SshTarget, deadline: Instant) -> Result<SshSession, SshError> {
    let addr = target.addr;
    let budget = |limit: Duration| limit.min(deadline.saturating_duration_since(Instant::now()));
    let mut clock = StepClock::start();

    let after = budget(CONNECT_TIMEOUT);
    let tcp = tokio::time::timeout(after, TcpStream::connect(addr))
        .await
        .map_err(|_| SshError::StepTimeout {
            addr,
            step: "TCP connect to",
            after,
        })?
        .map_err(|source| SshError::Connect { addr, source })?;
    // Only latency is at stake, so a failure here is not worth failing the attempt.
    let _ = tcp.set_nodelay(true);
    let connect = clock.lap();

    let mismatch = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        expected: target.expected_host_key.clone(),
        mismatch: Arc::clone(&mismatch),
    };
    let after = budget(HANDSHAKE_TIMEOUT);
    let handshake =
        tokio::time::timeout(after, client::connect_stream(client_config(), tcp, handler)).await;
    // Checked before anything else: a wrong key may surface as any error, or as a timeout.
    let presented = mismatch
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(presented) = presented {
        return Err(SshError::HostKeyMismatch {
            addr,
            expected: fingerprint(&target.expected_host_key),
            presented,
        });
    }
    let mut handle = handshake
        .map_err(|_| SshError::StepTimeout {
            addr,
            step: "SSH handshake with",
            after,
        })?
        .map_err(|source| SshError::Protocol { addr, source })?;
    let handshake = clock.lap();

    let after = budget(AUTH_TIMEOUT);
    let authenticated = tokio::time::timeout(after, authenticate(&mut handle, target))
        .await
        .map_err(|_| SshError::StepTimeout {
            addr,
            step: "SSH authentication with",
            after,
        })?
        .map_err(|source| SshError::Protocol { addr, source })?;
    if !authenticated {
        return Err(SshError::AuthRejected {
            addr,
            user: target.user.clone(),
        });
    }
    let auth = clock.lap();

    let session = SshSession { handle, addr };
    let after = budget(PROBE_TIMEOUT);
    let probe = match session
        .run_script("true", b"", after, PROBE_OUTPUT_LIMIT)
        .await
    {
        Ok(probe) => probe,
        Err(SshError::ScriptTimeout { .. }) => {
            return Err(SshError::StepTimeout {
                addr,
                step: "readiness probe on",
                after,
            })
        }
        Err(err) => return Err(err),
    };
    if probe.exit_status != Some(0) {
        return Err(SshError::ProbeFailed {
            addr,
            exit_status: probe.exit_status,
        });
    }
    let probe = clock.lap();
    debug!(%addr, ?connect, ?handshake, ?auth, ?probe, "ssh attempt steps");
    Ok(session)
}

/// Lap times of one connection attempt, for the debug log.
struct StepClock(Instant);

impl StepClock {
    fn start() -> Self {
        Self(Instant::now())
    }

    /// Time since the previous lap (or the start).
    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let lap = now.duration_since(self.0);
        self.0 = now;
        lap
    }
}

async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    target: &SshTarget,
) -> Result<bool, russh::Error> {
    // RSA needs the server's preferred hash; other algorithms ignore it.
    let hash = if target.client_key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await?.flatten()
    } else {
        None
    };
    let key = PrivateKeyWithHashAlg::new(Arc::clone(&target.client_key), hash);
    Ok(handle
        .authenticate_publickey(target.user.clone(), key)
        .await?
        .success())
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: Some(INACTIVITY_TIMEOUT),
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    })
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Pins the host key; russh calls it once per handshake.
pub(crate) struct ClientHandler {
    expected: PublicKey,
    /// What the server presented instead, so the caller can report it.
    mismatch: Arc<Mutex<Option<String>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                if key.key_data() == self.expected.key_data() {
                    return Ok(true);
                }
                fingerprint(key)
            }
            // We pin a bare key; a certificate, even for that key, is not what we provisioned.
            PublicKeyOrCertificate::Certificate(cert) => format!(
                "a certificate for {}",
                cert.public_key().fingerprint(HashAlg::Sha256)
            ),
        };
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = Some(presented);
        Ok(false)
    }
}

impl SshSession {
    /// The guest address this session is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `command` (e.g. `bash -s`) with `script` as its stdin, so the script (and any
    /// secret in it) never appears in a process list. Each output stream keeps at most
    /// `output_limit` bytes. After `timeout` the channel is closed and
    /// [`SshError::ScriptTimeout`] returned; the test guest then kills the command, while
    /// OpenSSH's sshd only closes its pipes (the VM is torn down afterwards anyway).
    pub async fn run_script(
        &self,
        command: &str,
        script: &[u8],
        timeout: Duration,
        output_limit: usize,
    ) -> Result<ScriptOutput, SshError> {
        let addr = self.addr;
        let deadline = Instant::now() + timeout;
        let channel = tokio::time::timeout_at(deadline, self.handle.channel_open_session())
            .await
            .map_err(|_| SshError::ScriptTimeout { after: timeout })?
            .map_err(|source| SshError::Protocol { addr, source })?;
        let (mut rx, tx) = channel.split();
        let outcome = tokio::time::timeout_at(
            deadline,
            drive_script(&mut rx, &tx, addr, command, script, output_limit),
        )
        .await;
        let result = match outcome {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(err)) => err,
            Err(_) => SshError::ScriptTimeout { after: timeout },
        };
        // Closing the channel is what tells sshd to stop the command; a dead session
        // makes this fail, which is fine.
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, tx.close()).await;
        Err(result)
    }

    /// Says goodbye to the guest; errors are irrelevant since the session is done.
    pub async fn close(self) {
        let _ = tokio::time::timeout(
            GOODBYE_TIMEOUT,
            self.handle.disconnect(Disconnect::ByApplication, "", "en"),
        )
        .await;
    }

    #[cfg(test)]
    pub(crate) fn handle(&self) -> &Handle<ClientHandler> {
        &self.handle
    }
}

async fn drive_script(
    rx: &mut ChannelReadHalf,
    tx: &ChannelWriteHalf<client::Msg>,
    addr: SocketAddr,
    command: &str,
    script: &[u8],
    output_limit: usize,
) -> Result<ScriptOutput, SshError> {
    tx.exec(true, command)
        .await
        .map_err(|source| SshError::Protocol { addr, source })?;

    // Stdin is written concurrently with reading output, so a command that talks a lot
    // before reading all of its input cannot deadlock against us.
    let write_stdin = async {
        tx.data(script).await?;
        tx.eof().await
    };
    tokio::pin!(write_stdin);

    let mut output = ScriptOutput {
        exit_status: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    };
    let mut exec_accepted = false;
    let mut stdin_done = false;
    let mut closed = false;
    loop {
        tokio::select! {
            written = &mut write_stdin, if exec_accepted && !stdin_done => {
                stdin_done = true;
                // A command may exit without reading all of stdin; its status tells the story.
                if let Err(err) = written {
                    debug!(%addr, error = %err, "stdin of the remote command was not fully written");
                }
            }
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Success) => exec_accepted = true,
                Some(ChannelMsg::Failure) if !exec_accepted => {
                    return Err(SshError::ExecRejected { addr });
                }
                Some(ChannelMsg::Data { data }) => {
                    append_bounded(&mut output.stdout, &data, output_limit, &mut output.truncated);
                }
                // Extended data type 1 is stderr (RFC 4254 §5.2); no other type is defined.
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    append_bounded(&mut output.stderr, &data, output_limit, &mut output.truncated);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => output.exit_status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    debug!(%addr, signal = ?signal_name, "remote command was killed by a signal");
                }
                Some(ChannelMsg::Close) => {
                    closed = true;
                    break;
                }
                None => break,
                Some(_) => {}
            },
        }
    }
    if !closed && output.exit_status.is_none() {
        return Err(SshError::Disconnected { addr });
    }
    Ok(output)
}

fn append_bounded(buf: &mut Vec<u8>, data: &[u8], limit: usize, truncated: &mut bool) {
    let room = limit.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::ssh::generate_ed25519;
    use crate::test_vm::{TestSshConfig, TestSshServer};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const USER: &str = "runner";
    const LIMIT: usize = 64 * 1024;
    const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20);

    struct Fixture {
        server: TestSshServer,
        target: SshTarget,
        workdir: tempfile::TempDir,
    }

    async fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let workdir = tempfile::tempdir()?;
        let host_key = generate_ed25519()?;
        let client_key = generate_ed25519()?;
        let target = SshTarget {
            addr: "127.0.0.1:1".parse()?,
            user: USER.to_owned(),
            expected_host_key: host_key.public_key().clone(),
            client_key: Arc::new(client_key.clone()),
        };
        let server = TestSshServer::start(TestSshConfig {
            host_key,
            authorized_key: client_key.public_key().clone(),
            user: USER.to_owned(),
            workdir: workdir.path().to_path_buf(),
            bind: "127.0.0.1:0".parse()?,
            env: Vec::new(),
        })
        .await?;
        let target = SshTarget {
            addr: server.local_addr(),
            ..target
        };
        Ok(Fixture {
            server,
            target,
            workdir,
        })
    }

    /// A loopback port that nothing listens on right now.
    fn free_port() -> std::io::Result<SocketAddr> {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
    }

    fn read(path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    #[tokio::test]
    async fn ready_then_script_from_stdin_runs_in_workdir() -> TestResult {
        let f = fixture().await?;
        let session = wait_ready(&f.target, Duration::from_secs(10)).await?;
        assert_eq!(session.addr(), f.target.addr);
        let script = b"printf '%s' 'secret-from-stdin' > marker\n\
                       echo to-stdout\n\
                       echo to-stderr >&2\n\
                       echo \"$HOME|$USER|$(pwd -P)\"\n";
        let out = session
            .run_script("sh -s", script, SCRIPT_TIMEOUT, LIMIT)
            .await?;
        assert_eq!(out.exit_status, Some(0), "{out:?}");
        let workdir = f.workdir.path().canonicalize()?;
        assert_eq!(
            String::from_utf8(out.stdout)?,
            format!(
                "to-stdout\n{}|{USER}|{}\n",
                f.workdir.path().display(),
                workdir.display()
            )
        );
        assert_eq!(out.stderr, b"to-stderr\n");
        assert!(!out.truncated);
        assert_eq!(read(&f.workdir.path().join("marker"))?, "secret-from-stdin");
        // The `true` probe plus the script.
        assert_eq!(f.server.exec_count(), 2);
        session.close().await;
        f.server.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn non_zero_exit_is_reported() -> TestResult {
        let f = fixture().await?;
        let session = wait_ready(&f.target, Duration::from_secs(10)).await?;
        let out = session
            .run_script(
                "sh -s",
                b"echo failing >&2; exit 7\n",
                SCRIPT_TIMEOUT,
                LIMIT,
            )
            .await?;
        assert_eq!(out.exit_status, Some(7));
        assert_eq!(out.stderr, b"failing\n");
        // A session survives a failed script.
        let out = session
            .run_script("exit 0", b"", SCRIPT_TIMEOUT, LIMIT)
            .await?;
        assert_eq!(out.exit_status, Some(0));
        Ok(())
    }

    #[tokio::test]
    async fn wrong_host_key_fails_fast_without_retrying() -> TestResult {
        let f = fixture().await?;
        let target = SshTarget {
            expected_host_key: generate_ed25519()?.public_key().clone(),
            ..f.target.clone()
        };
        let started = Instant::now();
        let err = wait_ready(&target, Duration::from_secs(30))
            .await
            .expect_err("a wrong host key must not connect");
        assert!(
            matches!(err, SshError::HostKeyMismatch { addr, .. } if addr == f.target.addr),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&fingerprint(&target.expected_host_key)),
            "{text}"
        );
        assert!(
            text.contains(&fingerprint(&f.target.expected_host_key)),
            "{text}"
        );
        // Loose: only proves it did not sit in the retry loop until the deadline.
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(f.server.exec_count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn wrong_client_key_is_rejected_without_retrying() -> TestResult {
        let f = fixture().await?;
        let target = SshTarget {
            client_key: Arc::new(generate_ed25519()?),
            ..f.target.clone()
        };
        let started = Instant::now();
        let err = wait_ready(&target, Duration::from_secs(30))
            .await
            .expect_err("an unknown client key must be rejected");
        assert!(
            matches!(&err, SshError::AuthRejected { user, .. } if user == USER),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(f.server.exec_count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn wrong_user_is_rejected() -> TestResult {
        let f = fixture().await?;
        let target = SshTarget {
            user: "root".to_owned(),
            ..f.target.clone()
        };
        let err = wait_ready(&target, Duration::from_secs(30))
            .await
            .expect_err("only the configured user may log in");
        assert!(matches!(err, SshError::AuthRejected { .. }), "{err:?}");
        Ok(())
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready_after_the_deadline() -> TestResult {
        let host_key = generate_ed25519()?;
        let target = SshTarget {
            addr: free_port()?,
            user: USER.to_owned(),
            client_key: Arc::new(generate_ed25519()?),
            expected_host_key: host_key.public_key().clone(),
        };
        let overall = Duration::from_secs(1);
        let started = Instant::now();
        let err = wait_ready(&target, overall)
            .await
            .expect_err("nothing listens there");
        assert!(started.elapsed() >= overall);
        match err {
            SshError::NotReady {
                addr,
                waited,
                last_error,
            } => {
                assert_eq!(addr, target.addr);
                assert!(waited >= overall);
                assert!(last_error.contains("TCP connection"), "{last_error}");
            }
            other => panic!("expected NotReady, got {other:?}"),
        }
        Ok(())
    }

    #[tokio::test]
    async fn server_that_starts_late_is_found() -> TestResult {
        let workdir = tempfile::tempdir()?;
        let host_key = generate_ed25519()?;
        let client_key = generate_ed25519()?;
        let addr = free_port()?;
        let target = SshTarget {
            addr,
            user: USER.to_owned(),
            client_key: Arc::new(client_key.clone()),
            expected_host_key: host_key.public_key().clone(),
        };
        let config = TestSshConfig {
            host_key,
            authorized_key: client_key.public_key().clone(),
            user: USER.to_owned(),
            workdir: workdir.path().to_path_buf(),
            bind: addr,
            env: Vec::new(),
        };
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            TestSshServer::start(config).await
        });
        let session = wait_ready(&target, Duration::from_secs(10)).await?;
        let server = late.await??;
        assert_eq!(server.exec_count(), 1);
        session.close().await;
        server.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn script_timeout_stops_the_script() -> TestResult {
        let f = fixture().await?;
        let session = wait_ready(&f.target, Duration::from_secs(10)).await?;
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        let err = session
            .run_script("sh -s", b"sleep 30 # secret-token\n", timeout, LIMIT)
            .await
            .expect_err("sleep 30 cannot finish in 500 ms");
        assert!(
            matches!(err, SshError::ScriptTimeout { after } if after == timeout),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains("secret"));
        assert!(started.elapsed() < Duration::from_secs(10));
        // The session is still usable afterwards.
        let out = session
            .run_script("sh -s", b"echo ok\n", SCRIPT_TIMEOUT, LIMIT)
            .await?;
        assert_eq!(out.stdout, b"ok\n");
        Ok(())
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_dropped() -> TestResult {
        let f = fixture().await?;
        let session = wait_ready(&f.target, Duration::from_secs(10)).await?;
        let limit = 1000;
        let script = b"head -c 200000 /dev/zero | tr '\\0' o\n\
                       head -c 200000 /dev/zero | tr '\\0' e >&2\n\
                       exit 3\n";
        let out = session
            .run_script("sh -s", script, SCRIPT_TIMEOUT, limit)
            .await?;
        assert_eq!(out.exit_status, Some(3), "the command runs to completion");
        assert!(out.truncated);
        assert_eq!(out.stdout, vec![b'o'; limit]);
        assert_eq!(out.stderr, vec![b'e'; limit]);

        let out = session
            .run_script("sh -s", b"printf abc\n", SCRIPT_TIMEOUT, 3)
            .await?;
        assert!(!out.truncated, "exactly the limit is not truncation");
        assert_eq!(out.stdout, b"abc");
        Ok(())
    }

    #[tokio::test]
    async fn large_script_on_stdin_arrives_whole() -> TestResult {
        let f = fixture().await?;
        let session = wait_ready(&f.target, Duration::from_secs(10)).await?;
        // Bigger than russh's 2 MiB window and 32 KiB packets, so flow control is exercised.
        let mut script = b"cat > copy <<'EOF'\n".to_vec();
        let body: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        script.extend_from_slice(body.as_bytes());
        script.extend_from_slice(b"EOF\nwc -c < copy\n");
        let out = session
            .run_script("sh -s", &script, SCRIPT_TIMEOUT, LIMIT)
            .await?;
        assert_eq!(out.exit_status, Some(0), "{out:?}");
        assert_eq!(read(&f.workdir.path().join("copy"))?, body);
        Ok(())
    }

    #[test]
    fn debug_of_target_shows_fingerprints_not_keys() -> Result<(), SshError> {
        let key = generate_ed25519()?;
        let target = SshTarget {
            addr: ([127, 0, 0, 1], 22).into(),
            user: USER.to_owned(),
            client_key: Arc::new(key.clone()),
            expected_host_key: key.public_key().clone(),
        };
        let text = format!("{target:?}");
        assert!(text.contains("SHA256:"), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");
        Ok(())
    }
}
