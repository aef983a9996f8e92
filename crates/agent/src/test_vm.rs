//! The SSH server that plays a VM's guest in shoes-vz's test backend.
//!
//! **The test backend isolates nothing.** Commands sent here run directly on the host, as
//! the agent's own user, in `workdir` — with the host's network, files and credentials. It
//! exists to exercise the agent's real SSH path (host-key pinning, key auth, scripts fed on
//! stdin) without a hypervisor. Bind it to loopback only.
//!
//! Each exec request runs `/bin/sh -c <command>` in its own process group with a cleared
//! environment (only `PATH`, `HOME=workdir` and `USER`). Closing the channel (how the
//! client gives up on a script) or stopping the server kills that whole group, the way a
//! guest's processes die with its VM. Processes that leave the group (`setsid`, daemons)
//! escape that, and a command's background processes outlive a command that exits normally.
//!
//! Commands and their stdin are never logged: the agent feeds runner secrets on stdin.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, Disconnect, MethodKind, MethodSet};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A client that sends nothing may not hold a connection slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for sessions to say goodbye and commands to be killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Bounds each polite message (exit status, disconnect) to a peer that may be gone.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
/// Notices clients that vanished without closing the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;
/// Backstop for connections that never authenticate (keepalives start only after auth).
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// What the fake guest accepts and where its commands run.
pub struct TestSshConfig {
    pub host_key: PrivateKey,
    /// The only key allowed to log in, and only as `user`.
    pub authorized_key: PublicKey,
    pub user: String,
    /// Commands' working directory and `HOME`.
    pub workdir: PathBuf,
    /// Usually `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Added to every command's otherwise cleared environment.
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for TestSshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSshConfig")
            .field(
                "host_key",
                &self.host_key.fingerprint(HashAlg::Sha256).to_string(),
            )
            .field(
                "authorized_key",
                &self.authorized_key.fingerprint(HashAlg::Sha256).to_string(),
            )
            .field("user", &self.user)
            .field("workdir", &self.workdir)
            .field("bind", &self.bind)
            .field("env", &self.env)
            .finish()
    }
}

/// A running fake guest sshd. Stops (listener, sessions, commands) on
/// [`shutdown`](Self::shutdown) or when dropped.
pub struct TestSshServer {
    local_addr: SocketAddr,
    exec_count: Arc<AtomicUsize>,
    cancel: CancellationToken,
    accept_task: Option<JoinHandle<()>>,
    /// Yields `None` once every task holding [`Shared`] has finished.
    all_done: mpsc::Receiver<()>,
}

impl fmt::Debug for TestSshServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestSshServer")
            .field("local_addr", &self.local_addr)
            .field("exec_count", &self.exec_count())
            .finish_non_exhaustive()
    }
}

/// State every connection and command task shares. Tasks hold it for as long as they run,
/// which is how shutdown knows they are all gone.
struct Shared {
    authorized_key: PublicKey,
    user: String,
    workdir: PathBuf,
    path: OsString,
    env: Vec<(String, String)>,
    exec_count: Arc<AtomicUsize>,
    cancel: CancellationToken,
    _alive: mpsc::Sender<()>,
}

impl TestSshServer {
    /// Binds `config.bind` and starts accepting connections in the background.
    pub async fn start(config: TestSshConfig) -> Result<TestSshServer, std::io::Error> {
        let listener = TcpListener::bind(config.bind).await?;
        let local_addr = listener.local_addr()?;
        let russh_config = Arc::new(server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![config.host_key],
            // OpenSSH clients probe with "none" first; no need to slow that down.
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: Some(INACTIVITY_TIMEOUT),
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        });
        let exec_count = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let (alive, all_done) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            authorized_key: config.authorized_key,
            user: config.user,
            workdir: config.workdir,
            path: std::env::var_os("PATH").unwrap_or_else(|| FALLBACK_PATH.into()),
            env: config.env,
            exec_count: Arc::clone(&exec_count),
            cancel: cancel.clone(),
            _alive: alive,
        });
        let accept_task = tokio::spawn(accept_loop(listener, russh_config, shared));
        debug!(addr = %local_addr, "test ssh server listening");
        Ok(TestSshServer {
            local_addr,
            exec_count,
            cancel,
            accept_task: Some(accept_task),
            all_done,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Exec requests whose command was started, for tests.
    pub fn exec_count(&self) -> usize {
        self.exec_count.load(Ordering::Relaxed)
    }

    /// Stops accepting, disconnects every session and kills running commands, waiting
    /// (briefly) until that is done.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let stopped = async {
            if let Some(task) = self.accept_task.take() {
                let _ = task.await;
            }
            // Every task drops its `Shared` (and so its sender) when it ends.
            let _ = self.all_done.recv().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE * 2, stopped)
            .await
            .is_err()
        {
            warn!(addr = %self.local_addr, "test ssh server did not stop in time; leaving its remaining tasks to finish on their own");
        }
    }
}

impl Drop for TestSshServer {
    fn drop(&mut self) {
        // Every task watches this token: the listener closes, sessions disconnect and
        // commands are killed without anyone awaiting them.
        self.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<server::Config>, shared: Arc<Shared>) {
    let cancel = shared.cancel.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // russh applies `Config::nodelay` only to sockets it accepts itself. With
                    // Nagle on, its back-to-back small writes wait for the client's delayed
                    // ACK: 40 ms, twice per readiness probe.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&config), Arc::clone(&shared)));
                }
                Err(err) => {
                    warn!(error = %err, "test ssh server could not accept a connection");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    // Connections see the same cancellation and disconnect; dropping the set aborts any
    // that are still stuck afterwards.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<server::Config>,
    shared: Arc<Shared>,
) {
    let cancel = shared.cancel.clone();
    let handler = GuestHandler {
        shared,
        idle_channels: HashMap::new(),
    };
    let started = tokio::select! {
        () = cancel.cancelled() => return,
        started = tokio::time::timeout(HANDSHAKE_TIMEOUT, server::run_stream(config, stream, handler)) => started,
    };
    let mut session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "test ssh connection failed to start");
            return;
        }
        Err(_) => {
            debug!(%peer, "test ssh client sent no SSH identification in time");
            return;
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {
            let handle = session.handle();
            let _ = tokio::time::timeout(
                GOODBYE_TIMEOUT,
                handle.disconnect(Disconnect::ByApplication, "the test VM is shutting down".into(), "en".into()),
            )
            .await;
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, &mut session).await;
        }
        ended = &mut session => {
            if let Err(err) = ended {
                debug!(%peer, error = %err, "test ssh session ended with an error");
            }
        }
    }
}

/// One SSH connection's view of the fake guest.
struct GuestHandler {
    shared: Arc<Shared>,
    /// Session channels opened but not yet given a command.
    idle_channels: HashMap<ChannelId, Channel<Msg>>,
}

impl GuestHandler {
    fn auth(&self, user: &str, key: &PublicKey) -> Auth {
        if user == self.shared.user && key.key_data() == self.shared.authorized_key.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }

    fn spawn(&self, command: &[u8]) -> std::io::Result<Child> {
        let shared = &self.shared;
        Command::new("/bin/sh")
            .arg("-c")
            .arg(OsStr::from_bytes(command))
            .current_dir(&shared.workdir)
            .env_clear()
            .env("PATH", &shared.path)
            .env("HOME", &shared.workdir)
            .env("USER", &shared.user)
            .envs(shared.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so stopping it also stops what it started.
            .process_group(0)
            // Backstop if the runtime drops the task before it could kill the group.
            .kill_on_drop(true)
            .spawn()
    }
}

impl server::Handler for GuestHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.auth(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.auth(user, key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.idle_channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.idle_channels.remove(&channel);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Absent if this channel already runs a command: one command per channel.
        let Some(open) = self.idle_channels.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        match self.spawn(data) {
            Ok(child) => {
                session.channel_success(channel)?;
                self.shared.exec_count.fetch_add(1, Ordering::Relaxed);
                // Not tied to this handler: the task must outlive a dropped session long
                // enough to kill the command's process group.
                tokio::spawn(run_command(open, child, Arc::clone(&self.shared)));
            }
            Err(err) => {
                // The error only: the command may carry secrets.
                warn!(error = %err, workdir = %self.shared.workdir.display(), "test ssh server could not start /bin/sh");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    // Only exec is supported: no terminals, shells, subsystems, forwarding or env.
    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }
}

/// Pumps one command's stdin/stdout/stderr over its channel, then reports its exit status.
/// Kills its process group if the client closes the channel or the server stops first.
async fn run_command(channel: Channel<Msg>, mut child: Child, shared: Arc<Shared>) {
    let (mut rx, tx) = channel.split();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    // Channel data is queued rather than written inline, so a command that does not read
    // its stdin cannot stop us from noticing that the client closed the channel.
    let (stdin_tx, mut stdin_rx) = mpsc::unbounded_channel();
    let mut stdin_tx = Some(stdin_tx);
    let mut watch_channel = Box::pin(async {
        loop {
            match rx.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(queue) = &stdin_tx {
                        let _ = queue.send(data);
                    }
                }
                Some(ChannelMsg::Eof) => stdin_tx = None,
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            }
        }
    });
    let mut feed_stdin = Box::pin(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(chunk) = stdin_rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                // The command closed its stdin; the rest is of no use to it.
                return;
            }
        }
        // Dropping `stdin` here passes the client's EOF on.
    });
    let mut finish = Box::pin(async {
        let copy_stdout = async {
            if let Some(stdout) = stdout {
                let _ = tx.data(stdout).await;
            }
        };
        // Extended data type 1 is stderr (RFC 4254 §5.2).
        let copy_stderr = async {
            if let Some(stderr) = stderr {
                let _ = tx.extended_data(1, stderr).await;
            }
        };
        let ((), (), status) = tokio::join!(copy_stdout, copy_stderr, child.wait());
        status
    });

    let mut stdin_fed = false;
    let status = loop {
        tokio::select! {
            () = shared.cancel.cancelled() => break None,
            () = &mut watch_channel => break None,
            () = &mut feed_stdin, if !stdin_fed => stdin_fed = true,
            status = &mut finish => break Some(status),
        }
    };
    drop(finish);
    drop(watch_channel);

    let Some(status) = status else {
        stop(&mut child).await;
        return;
    };
    let code = match status {
        Ok(status) => status
            .code()
            .and_then(|code| u32::try_from(code).ok())
            // Killed by a signal: report it the way a shell would.
            .or_else(|| {
                status
                    .signal()
                    .and_then(|sig| u32::try_from(128 + sig).ok())
            }),
        Err(err) => {
            warn!(error = %err, "test ssh server lost track of a command");
            None
        }
    };
    let goodbye = async {
        if let Some(code) = code {
            tx.exit_status(code).await?;
        }
        tx.eof().await?;
        tx.close().await
    };
    // The client may already be gone; then there is nobody left to tell.
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
}

/// Kills the command's process group, then reaps the command.
async fn stop(child: &mut Child) {
    // `id()` is `None` once the leader was reaped; its group id may then belong to
    // someone else, so only the leader (if anything) is signalled.
    if let Some(pgid) = child.id() {
        // Nothing in std or tokio signals a process group, and unsafe code is denied.
        let killed = tokio::time::timeout(
            GOODBYE_TIMEOUT,
            Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(format!("-{pgid}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await;
        if !matches!(killed, Ok(Ok(status)) if status.success()) {
            debug!(
                pgid,
                "could not kill a test command's process group; killing its leader only"
            );
        }
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, child.wait()).await;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use russh::client;
    use russh::keys::PublicKeyOrCertificate;
    use tokio::time::Instant;

    use super::*;
    use crate::ssh::{generate_ed25519, wait_ready, SshError, SshSession, SshTarget};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const USER: &str = "runner";
    const LIMIT: usize = 64 * 1024;

    struct Fixture {
        server: TestSshServer,
        target: SshTarget,
        workdir: tempfile::TempDir,
    }

    async fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let workdir = tempfile::tempdir()?;
        let host_key = generate_ed25519()?;
        let client_key = generate_ed25519()?;
        let expected_host_key = host_key.public_key().clone();
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
            user: USER.to_owned(),
            client_key: Arc::new(client_key),
            expected_host_key,
        };
        Ok(Fixture {
            server,
            target,
            workdir,
        })
    }

    async fn ready(f: &Fixture) -> Result<SshSession, SshError> {
        wait_ready(&f.target, Duration::from_secs(10)).await
    }

    /// Trusts any host key; these tests are about what the server allows after that.
    struct AnyHost;

    impl client::Handler for AnyHost {
        type Error = russh::Error;

        async fn check_server_key(
            &mut self,
            _key: &PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    async fn wait_for_file(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if text.ends_with('\n') {
                    return Ok(text.trim().to_owned());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} never appeared", path.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn process_alive(pid: &str) -> std::io::Result<bool> {
        let status = Command::new("kill")
            .arg("-0")
            .arg(pid)
            .stderr(Stdio::null())
            .status()
            .await?;
        Ok(status.success())
    }

    async fn wait_until_dead(pid: &str) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid).await? {
            if Instant::now() > deadline {
                return Err(format!("process {pid} is still alive").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// `sleep 30` in the background of the command; it writes the sleeper's pid to `name`.
    fn sleeper_script(name: &str) -> Vec<u8> {
        format!("sleep 30 &\necho $! > {name}.tmp && mv {name}.tmp {name}\nwait\n").into_bytes()
    }

    #[tokio::test]
    async fn only_public_key_auth_for_the_configured_user_is_accepted() -> TestResult {
        let f = fixture().await?;
        let mut handle = client::connect(
            Arc::new(client::Config::default()),
            f.server.local_addr(),
            AnyHost,
        )
        .await?;
        assert!(!handle.authenticate_none(USER).await?.success());
        assert!(!handle
            .authenticate_password(USER, "hunter2")
            .await?
            .success());
        Ok(())
    }

    #[tokio::test]
    async fn shells_and_terminals_are_refused_but_the_session_lives_on() -> TestResult {
        let f = fixture().await?;
        let session = ready(&f).await?;

        let mut channel = session.handle().channel_open_session().await?;
        channel
            .request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await?;
        assert!(matches!(channel.wait().await, Some(ChannelMsg::Failure)));
        channel.request_shell(true).await?;
        assert!(matches!(channel.wait().await, Some(ChannelMsg::Failure)));
        channel.close().await?;

        let out = session
            .run_script(
                "sh -s",
                b"echo still here\n",
                Duration::from_secs(10),
                LIMIT,
            )
            .await?;
        assert_eq!(out.stdout, b"still here\n");
        // Only the readiness probe and the script ran.
        assert_eq!(f.server.exec_count(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn stdin_eof_reaches_the_command() -> TestResult {
        let f = fixture().await?;
        let session = ready(&f).await?;
        // `cat` only exits once the client's EOF closed its stdin.
        let out = session
            .run_script("cat", b"round trip", Duration::from_secs(10), LIMIT)
            .await?;
        assert_eq!(out.exit_status, Some(0));
        assert_eq!(out.stdout, b"round trip");
        Ok(())
    }

    #[tokio::test]
    async fn environment_is_cleared() -> TestResult {
        let f = fixture().await?;
        let session = ready(&f).await?;
        let out = session
            .run_script("env", b"", Duration::from_secs(10), LIMIT)
            .await?;
        let mut names: Vec<String> = String::from_utf8(out.stdout)?
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name.to_owned()))
            .collect();
        names.sort();
        // sh itself may export PWD (and dash SHLVL/OLDPWD); nothing from our environment.
        names.retain(|name| !matches!(name.as_str(), "PWD" | "OLDPWD" | "SHLVL" | "_"));
        assert_eq!(names, ["HOME", "PATH", "USER"]);
        Ok(())
    }

    #[tokio::test]
    async fn giving_up_on_a_script_kills_what_it_started() -> TestResult {
        let f = fixture().await?;
        let session = ready(&f).await?;
        let err = session
            .run_script(
                "sh -s",
                &sleeper_script("pid"),
                Duration::from_millis(500),
                LIMIT,
            )
            .await
            .expect_err("the script sleeps for 30 s");
        assert!(matches!(err, SshError::ScriptTimeout { .. }), "{err:?}");
        let pid = wait_for_file(&f.workdir.path().join("pid")).await?;
        wait_until_dead(&pid).await
    }

    #[tokio::test]
    async fn shutdown_disconnects_and_kills_running_commands() -> TestResult {
        let f = fixture().await?;
        let session = ready(&f).await?;
        let addr = f.server.local_addr();
        let script = tokio::spawn(async move {
            session
                .run_script(
                    "sh -s",
                    &sleeper_script("pid"),
                    Duration::from_secs(60),
                    LIMIT,
                )
                .await
        });
        let pid = wait_for_file(&f.workdir.path().join("pid")).await?;
        assert!(process_alive(&pid).await?);

        f.server.shutdown().await;
        wait_until_dead(&pid).await?;
        let result = tokio::time::timeout(Duration::from_secs(10), script).await??;
        assert!(
            matches!(result, Err(SshError::Disconnected { .. })),
            "{result:?}"
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener must be closed"
        );
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_server_kills_running_commands() -> TestResult {
        let f = fixture().await?;
        let session = ready(&f).await?;
        let script = tokio::spawn(async move {
            session
                .run_script(
                    "sh -s",
                    &sleeper_script("pid"),
                    Duration::from_secs(60),
                    LIMIT,
                )
                .await
        });
        let pid = wait_for_file(&f.workdir.path().join("pid")).await?;
        drop(f.server);
        wait_until_dead(&pid).await?;
        let result = tokio::time::timeout(Duration::from_secs(10), script).await??;
        assert!(result.is_err(), "{result:?}");
        Ok(())
    }
}
