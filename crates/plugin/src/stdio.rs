//! `plugin.GRPCStdio/StreamStdio`: go-plugin (v1.5+) hosts open this stream right after
//! connecting, to mirror stdout/stderr that a Go plugin captured in-process. Without the
//! service, go-plugin v1.7.0 logs the `Unimplemented` error of every call. We capture nothing
//! (our log lines reach the host through the stderr pipe, and stdout carries only the
//! handshake), so the stream ends at once, cleanly: the host's stdio loop sees EOF and stops.

use crate::proto::plugin::grpc_stdio_server::GrpcStdio;
use crate::proto::plugin::StdioData;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub type StdioStream = Pin<Box<dyn Stream<Item = Result<StdioData, Status>> + Send>>;

#[derive(Debug, Default)]
pub struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = StdioStream;

    async fn stream_stdio(
        &self,
        _request: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn the_stream_ends_cleanly_without_data() {
        let response = Stdio
            .stream_stdio(Request::new(()))
            .await
            .expect("answered");
        let items: Vec<_> = response.into_inner().collect().await;
        assert!(items.is_empty(), "{items:?}");
    }
}
