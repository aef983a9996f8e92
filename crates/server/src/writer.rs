//! Write-behind to the store: one task applies writes in the order the fleet made them, so
//! the fleet never holds its lock across database I/O and rows never go back in time.

use crate::store::{AgentRecord, RunnerRecord, Store, StoreError};
use shoes_vz_model::AgentId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

enum Op {
    InsertRunner(Box<RunnerRecord>, oneshot::Sender<Result<(), StoreError>>),
    UpdateRunner(Box<RunnerRecord>),
    UpdateRunnerAcked(Box<RunnerRecord>, oneshot::Sender<Result<(), StoreError>>),
    UpsertAgent(Box<AgentRecord>),
    AgentOnline(AgentId, bool, i64),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::UnboundedSender<Op>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the state store writer has stopped (the server is shutting down)")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StoreWriter {
    /// Starts the writer task; it ends once every `StoreWriter` clone is dropped.
    pub fn spawn(store: Store) -> (StoreWriter, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                apply(&store, op).await;
            }
        });
        (StoreWriter { tx }, task)
    }

    /// Queues the insert now (before any later write of the runner) and returns a future
    /// that resolves once the row is durable: a runner is never pushed to an agent before the
    /// store knows it.
    pub fn insert_runner(
        &self,
        record: RunnerRecord,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let sent = self
            .tx
            .send(Op::InsertRunner(Box::new(record), ack))
            .is_ok();
        async move {
            if !sent {
                return Err(WriteError::Stopped);
            }
            done.await.map_err(|_| WriteError::Stopped)??;
            Ok(())
        }
    }

    pub fn update_runner(&self, record: RunnerRecord) {
        self.send(Op::UpdateRunner(Box::new(record)));
    }

    /// Queues an update like [`Self::update_runner`] (in order with every other write) and
    /// returns a future that resolves once it is durable.
    pub fn update_runner_durably(
        &self,
        record: RunnerRecord,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let sent = self
            .tx
            .send(Op::UpdateRunnerAcked(Box::new(record), ack))
            .is_ok();
        async move {
            if !sent {
                return Err(WriteError::Stopped);
            }
            done.await.map_err(|_| WriteError::Stopped)??;
            Ok(())
        }
    }

    pub fn upsert_agent(&self, record: AgentRecord) {
        self.send(Op::UpsertAgent(Box::new(record)));
    }

    pub fn agent_online(&self, id: AgentId, online: bool, at_ms: i64) {
        self.send(Op::AgentOnline(id, online, at_ms));
    }

    /// Waits until every write queued before this call is applied.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Op::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            tracing::error!("state store writer has stopped; a write was lost");
        }
    }
}

async fn apply(store: &Store, op: Op) {
    let result = match op {
        Op::InsertRunner(record, ack) => {
            let _ = ack.send(store.insert_runner(&record).await);
            return;
        }
        Op::UpdateRunner(record) => store.update_runner(&record).await,
        Op::UpdateRunnerAcked(record, ack) => {
            let _ = ack.send(store.update_runner(&record).await);
            return;
        }
        Op::UpsertAgent(record) => store.upsert_agent(&record).await,
        Op::AgentOnline(id, online, at_ms) => store.set_agent_online(&id, online, at_ms).await,
        Op::Flush(ack) => {
            let _ = ack.send(());
            return;
        }
    };
    if let Err(error) = result {
        tracing::error!(error = %error, "state store write failed");
    }
}
