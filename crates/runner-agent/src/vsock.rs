//! The same HTTP API on a virtio socket (vsock), for guests under Virtualization.framework:
//! the host connects through its `VZVirtioSocketDevice` (only the host can; other guests on
//! the shared NAT segment cannot, tart#20), so the warm-restore `/refresh` with a new token
//! and SSH host key never crosses a network.
//!
//! AF_VSOCK exists in macOS guests (`<sys/vsock.h>`; tart-guest-agent serves `tart exec` on
//! it) and on Linux. The socket is made with nix (`VsockAddr`, Linux and Apple targets) and
//! accepted with socket2; tokio drives the descriptors. **Not yet run in a macOS guest**: CI
//! binds it on Linux and serves the router over Unix sockets through the same code path
//! ([`serve`]); docs/macos.md lists the Mac check.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use axum::Router;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Any peer on the host side: the guest accepts connections from the hypervisor only anyway.
const ANY_CID: u32 = u32::MAX;
const BACKLOG: i32 = 16;
/// After a failed accept (e.g. out of descriptors), before the next try.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A listening vsock socket, for [`axum::serve`].
pub struct VsockListener {
    socket: AsyncFd<socket2::Socket>,
    port: u32,
}

impl VsockListener {
    /// Listens on vsock `port` for connections from the host.
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};
        let fd: OwnedFd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )?;
        socket::bind(fd.as_raw_fd(), &VsockAddr::new(ANY_CID, port))?;
        socket::listen(&fd, Backlog::new(BACKLOG)?)?;
        let socket = socket2::Socket::from(fd);
        socket.set_nonblocking(true)?;
        // tokio 1.54 deprecates `new` for owners that might close the descriptor behind its
        // back; `socket2::Socket` owns it and closes it only when the AsyncFd drops it, and the
        // replacement (`register`) is `unsafe`, which this crate denies.
        #[allow(deprecated)]
        let socket = AsyncFd::new(socket)?;
        Ok(VsockListener { socket, port })
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    async fn accept_stream(&self) -> io::Result<tokio::net::UnixStream> {
        loop {
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|socket| socket.get_ref().accept()) {
                Ok(accepted) => {
                    let (connection, _peer) = accepted?;
                    return stream(connection);
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// An accepted connection as a tokio stream (only read and written, so tokio's Unix stream
/// type carries the vsock descriptor).
fn stream(connection: socket2::Socket) -> io::Result<tokio::net::UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(OwnedFd::from(connection));
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

impl axum::serve::Listener for VsockListener {
    type Io = tokio::net::UnixStream;
    /// The port (vsock peers have no address worth logging).
    type Addr = u32;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.accept_stream().await {
                Ok(stream) => return (stream, self.port),
                Err(error) => {
                    warn!(error = %error, "vsock accept failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.port)
    }
}

/// Serves `router` on `listener` until `stop` is cancelled (a spawned task the caller owns).
pub fn serve<L>(listener: L, router: Router, stop: CancellationToken) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = served {
            warn!(error = %err, "the vsock API stopped");
        }
    })
}

/// Binds vsock `port` and serves `router` there; `None` (logged) when this machine has no
/// vsock (e.g. a QEMU guest without a vhost-vsock device): the network API still serves.
pub fn start(
    port: u32,
    router: Router,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    match VsockListener::bind(port) {
        Ok(listener) => {
            info!(port, "HTTP API listening on vsock");
            Some(serve(listener, router, stop))
        }
        Err(error) => {
            info!(port, error = %error, "no vsock here; the API serves on the network only");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    fn vsock_available() -> bool {
        nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Vsock,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        )
        .is_ok()
    }

    /// Written inline (no shared helper on this branch): a missing prerequisite skips loudly,
    /// and fails under CI.
    fn skip_or_fail(why: &str, how: &str) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {why}; {how}"
        );
        eprintln!("SKIPPED: {why}; {how}");
    }

    #[tokio::test]
    async fn a_vsock_port_binds_and_reports_itself() {
        if !vsock_available() {
            skip_or_fail(
                "AF_VSOCK sockets (kernel vsock support)",
                "run on a host with /dev/vsock or the vsock module loaded",
            );
            return;
        }
        let listener = VsockListener::bind(52999).expect("bind a free vsock port");
        assert_eq!(listener.port(), 52999);
        assert_eq!(
            axum::serve::Listener::local_addr(&listener).expect("addr"),
            52999
        );
        let error = VsockListener::bind(52999).err().expect("the port is taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    }

    #[tokio::test]
    async fn serve_answers_over_a_stream_and_stops_when_told() {
        // The same serve() the vsock listener uses, over a Unix listener: no vsock transport
        // connects inside one Linux machine here.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let router = Router::new().route("/health", get(|| async { "ok" }));
        let stop = CancellationToken::new();
        let task = serve(listener, router, stop.clone());

        let stream = tokio::net::UnixStream::connect(&path)
            .await
            .expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        let driver = tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri("/health")
            .header("host", "guest.vsock")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        drop(sender);
        driver.abort();

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("stops when told")
            .expect("task");
    }
}
