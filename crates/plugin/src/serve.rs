//! One plugin process: bind a fresh loopback port, announce it on stdout, serve until the host
//! calls Shutdown (or kills us). SIGINT is ignored: the host controls our lifetime, and a
//! Ctrl-C in myshoes' terminal reaches its plugins too.

use crate::config::PluginConfig;
use crate::controller::Controller;
use crate::handshake;
use crate::proto::myshoes::shoes_server::ShoesServer;
use crate::proto::plugin::grpc_controller_server::GrpcControllerServer;
use crate::proto::plugin::grpc_stdio_server::GrpcStdioServer;
use crate::shoes_service::ShoesPlugin;
use crate::stdio::Stdio;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::TcpListenerStream;

/// go-plugin's health service name.
pub const HEALTH_SERVICE: &str = "plugin";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on a loopback port")]
    Bind(#[source] std::io::Error),
    #[error("cannot install the SIGINT handler")]
    Signal(#[source] std::io::Error),
    #[error("cannot write the handshake line to stdout")]
    Announce(#[source] std::io::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

pub async fn run(config: PluginConfig) -> Result<(), ServeError> {
    // Installed first: from now on SIGINT is delivered to this stream instead of ending us.
    let mut interrupts = signal(SignalKind::interrupt()).map_err(ServeError::Signal)?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(ServeError::Bind)?;
    let addr = listener.local_addr().map_err(ServeError::Bind)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(ShoesServer::new(ShoesPlugin::new(config)))
        .add_service(GrpcControllerServer::new(Controller::new()))
        .add_service(GrpcStdioServer::new(Stdio))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::pin!(server);

    handshake::announce(addr).map_err(ServeError::Announce)?;
    tracing::debug!(%addr, "plugin serving");
    loop {
        tokio::select! {
            result = &mut server => return result.map_err(ServeError::Serve),
            Some(()) = interrupts.recv() => tracing::debug!("SIGINT ignored; the host ends this plugin"),
        }
    }
}
