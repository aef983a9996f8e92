//! `plugin.GRPCController/Shutdown`: go-plugin's `Kill()` calls it, then waits up to 2 s for the
//! process to exit before sending SIGKILL. We answer at once and exit shortly after, from a
//! separate task: waiting for our own graceful shutdown inside the handler would deadlock.

use crate::proto::plugin::grpc_controller_server::GrpcController;
use crate::proto::plugin::Empty;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Long enough for the answer to leave the socket, far below go-plugin's 2 s.
pub const EXIT_DELAY: Duration = Duration::from_millis(50);

/// The log line written just before the process exits.
pub const EXIT_MESSAGE: &str = "shutdown requested by the host; plugin exiting";

pub type ExitFn = Arc<dyn Fn() + Send + Sync>;

pub struct Controller {
    exit: ExitFn,
}

impl Controller {
    /// Exits the whole process.
    pub fn new() -> Self {
        Self::with_exit(Arc::new(|| std::process::exit(0)))
    }

    pub fn with_exit(exit: ExitFn) -> Self {
        Self { exit }
    }
}

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        let exit = self.exit.clone();
        // Ends the process, so it needs no owner to stop it.
        tokio::spawn(async move {
            tokio::time::sleep(EXIT_DELAY).await;
            tracing::info!("{EXIT_MESSAGE}");
            exit();
        });
        Ok(Response::new(Empty {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn shutdown_answers_first_then_exits() {
        let exited = Arc::new(AtomicBool::new(false));
        let flag = exited.clone();
        let controller =
            Controller::with_exit(Arc::new(move || flag.store(true, Ordering::SeqCst)));
        controller
            .shutdown(Request::new(Empty {}))
            .await
            .expect("answered");
        assert!(
            !exited.load(Ordering::SeqCst),
            "answer comes before the exit"
        );
        tokio::time::sleep(EXIT_DELAY * 2).await;
        assert!(exited.load(Ordering::SeqCst), "exit follows the answer");
    }
}
