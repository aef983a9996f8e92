//! N simulated agents on one tokio runtime, owned together: started at once, stopped at once.

use super::sim_agent::{agent_endpoint, Link, Shared, SimAgent};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct SimFleet {
    tasks: JoinSet<()>,
    stop: CancellationToken,
    pub shared: Arc<Shared>,
    /// HTTP/2 connections the agents use (one per agent unless shared).
    pub connections: usize,
}

impl SimFleet {
    /// Starts `agents` agents; `per_connection` > 1 puts that many on one shared connection.
    pub fn start(
        agents: usize,
        per_connection: usize,
        server_url: &str,
        shared: Shared,
    ) -> Result<SimFleet, tonic::transport::Error> {
        let endpoint = agent_endpoint(server_url)?;
        let shared = Arc::new(shared);
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let per_connection = per_connection.max(1);
        let mut shared_channel = None;
        for index in 0..agents {
            let link = if per_connection == 1 {
                Link::Own(Box::new(endpoint.clone()))
            } else {
                if index % per_connection == 0 {
                    shared_channel = Some(endpoint.connect_lazy());
                }
                match &shared_channel {
                    Some(channel) => Link::Shared(channel.clone()),
                    None => Link::Own(Box::new(endpoint.clone())),
                }
            };
            let agent = SimAgent::new(index, Arc::clone(&shared), link);
            tasks.spawn(agent.run(stop.clone()));
        }
        Ok(SimFleet {
            tasks,
            stop,
            shared,
            connections: agents.div_ceil(per_connection),
        })
    }

    pub fn live_runners(&self) -> i64 {
        self.shared.counters.live_runners.load(Ordering::Relaxed)
    }

    /// Waits until no simulated agent holds a runner; false after `within`.
    pub async fn wait_no_runners(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.live_runners() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops every agent (their streams end) and waits for them, at most a few seconds.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }
}
