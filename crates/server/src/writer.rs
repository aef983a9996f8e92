//! Write-behind to the store: one task applies writes in the order the fleet made them, so
//! the fleet never holds its lock across database I/O and rows never go back in time.
//!
//! Everything queued while a commit runs goes into the next transaction (up to
//! [`MAX_BATCH`] writes), so the store's cost per write falls as load rises. A batch that fails
//! is retried one write per transaction, so one bad write costs only itself. New runners wait
//! for room when the queue is deep ([`StoreWriter::wait_for_room`]): the backlog stays bounded
//! and its age (the writer's lag) is a metric.

use crate::store::{AgentRecord, KnownStates, RunnerRecord, Store, StoreError, Write};
use shoes_vz_model::AgentId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// The most writes one transaction carries.
pub const MAX_BATCH: usize = 512;
/// Queued writes beyond which new runners wait for the writer to catch up.
pub const HIGH_WATER: usize = 4 * MAX_BATCH;

enum Op {
    InsertRunner(Box<RunnerRecord>, oneshot::Sender<Result<(), StoreError>>),
    UpdateRunner(
        Box<RunnerRecord>,
        Option<oneshot::Sender<Result<(), StoreError>>>,
    ),
    UpsertAgent(Box<AgentRecord>),
    AgentOnline(AgentId, bool, i64),
    Flush(oneshot::Sender<()>),
    /// Deleted runners past retention; in its own transaction, in order with the writes.
    Prune {
        created_before_ms: i64,
        limit: u32,
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
}

impl Op {
    fn write(&self) -> Option<Write<'_>> {
        Some(match self {
            Op::InsertRunner(record, _) => Write::InsertRunner(record),
            Op::UpdateRunner(record, _) => Write::UpdateRunner(record),
            Op::UpsertAgent(record) => Write::UpsertAgent(record),
            Op::AgentOnline(id, online, at) => Write::AgentOnline(id, *online, *at),
            Op::Flush(_) | Op::Prune { .. } => return None,
        })
    }

    /// Tells whoever waits how the write went.
    fn finish(self, result: Result<(), StoreError>) {
        match self {
            Op::InsertRunner(_, ack) | Op::UpdateRunner(_, Some(ack)) => {
                let _ = ack.send(result);
            }
            Op::Flush(ack) => {
                let _ = ack.send(());
            }
            Op::Prune { ack, .. } => {
                let _ = ack.send(Ok(0));
            }
            Op::UpdateRunner(_, None) | Op::UpsertAgent(_) | Op::AgentOnline(..) => {
                if let Err(error) = result {
                    tracing::error!(error = %error, "state store write failed");
                }
            }
        }
    }
}

/// When each queued write was queued, oldest first: the backlog's depth and age.
#[derive(Default)]
struct Backlog {
    queued_at: VecDeque<Instant>,
}

#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::UnboundedSender<Op>,
    backlog: Arc<Mutex<Backlog>>,
    room: Arc<Notify>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the state store writer has stopped (the server is shutting down)")]
    Stopped,
    #[error("the state store is {queued} writes behind and did not catch up within {waited:?}; check the database's health and latency")]
    Behind { queued: usize, waited: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StoreWriter {
    /// Starts the writer task; it ends once every `StoreWriter` clone is dropped.
    pub fn spawn(store: Store) -> (StoreWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = StoreWriter {
            tx,
            backlog: Arc::default(),
            room: Arc::default(),
        };
        let task = tokio::spawn(run(
            store,
            rx,
            Arc::clone(&writer.backlog),
            Arc::clone(&writer.room),
        ));
        (writer, task)
    }

    /// Queues the insert now (before any later write of the runner) and returns a future
    /// that resolves once the row is durable: a runner is never pushed to an agent before the
    /// store knows it.
    pub fn insert_runner(
        &self,
        record: RunnerRecord,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let sent = self.send(Op::InsertRunner(Box::new(record), ack));
        acknowledged(sent, done)
    }

    pub fn update_runner(&self, record: RunnerRecord) {
        self.send(Op::UpdateRunner(Box::new(record), None));
    }

    /// Queues an update like [`Self::update_runner`] (in order with every other write) and
    /// returns a future that resolves once it is durable.
    pub fn update_runner_durably(
        &self,
        record: RunnerRecord,
    ) -> impl std::future::Future<Output = Result<(), WriteError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let sent = self.send(Op::UpdateRunner(Box::new(record), Some(ack)));
        acknowledged(sent, done)
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
        if self.send(Op::Flush(ack)) {
            let _ = done.await;
        }
    }

    /// Prunes up to `limit` deleted runners created before `created_before_ms` (see
    /// [`Store::prune_deleted`]), after every write queued before it; how many went.
    pub async fn prune(&self, created_before_ms: i64, limit: u32) -> Result<u64, WriteError> {
        let (ack, done) = oneshot::channel();
        if !self.send(Op::Prune {
            created_before_ms,
            limit,
            ack,
        }) {
            return Err(WriteError::Stopped);
        }
        Ok(done.await.map_err(|_| WriteError::Stopped)??)
    }

    /// Returns once fewer than [`HIGH_WATER`] writes are queued, or fails after `limit`: new
    /// work waits here instead of growing the backlog without end.
    pub async fn wait_for_room(&self, limit: Duration) -> Result<(), WriteError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let room = self.room.notified();
            let queued = self.queued();
            if queued < HIGH_WATER {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(WriteError::Behind {
                    queued,
                    waited: limit,
                });
            }
        }
    }

    /// Writes queued and not yet committed.
    pub fn queued(&self) -> usize {
        lock(&self.backlog).queued_at.len()
    }

    /// How long the oldest write not yet committed has waited (zero when none waits).
    pub fn lag(&self) -> Duration {
        lock(&self.backlog)
            .queued_at
            .front()
            .map_or(Duration::ZERO, Instant::elapsed)
    }

    fn send(&self, op: Op) -> bool {
        // Under the backlog's lock, so its times stay in the channel's order.
        let mut backlog = lock(&self.backlog);
        if self.tx.send(op).is_err() {
            tracing::error!("state store writer has stopped; a write was lost");
            return false;
        }
        backlog.queued_at.push_back(Instant::now());
        true
    }
}

fn lock(backlog: &Mutex<Backlog>) -> MutexGuard<'_, Backlog> {
    // Plain timestamps: a panic elsewhere leaves nothing half-done worth refusing.
    match backlog.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

async fn acknowledged(
    sent: bool,
    done: oneshot::Receiver<Result<(), StoreError>>,
) -> Result<(), WriteError> {
    if !sent {
        return Err(WriteError::Stopped);
    }
    done.await.map_err(|_| WriteError::Stopped)??;
    Ok(())
}

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Op>,
    backlog: Arc<Mutex<Backlog>>,
    room: Arc<Notify>,
) {
    let mut known = KnownStates::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let applied = batch.len();
        // Writes go together; a prune goes alone, after the writes queued before it.
        let mut writes = Vec::with_capacity(batch.len());
        for op in batch.drain(..) {
            if let Op::Prune {
                created_before_ms,
                limit,
                ack,
            } = op
            {
                commit(&store, &mut known, std::mem::take(&mut writes)).await;
                let _ = ack.send(store.prune_deleted(created_before_ms, limit).await);
            } else {
                writes.push(op);
            }
        }
        commit(&store, &mut known, writes).await;
        {
            let mut backlog = lock(&backlog);
            let drained = applied.min(backlog.queued_at.len());
            backlog.queued_at.drain(..drained);
        }
        room.notify_waiters();
    }
}

/// Commits `batch` in one transaction, or (when that fails) one write per transaction, then
/// tells every waiter.
async fn commit(store: &Store, known: &mut KnownStates, batch: Vec<Op>) {
    let writes: Vec<Write<'_>> = batch.iter().filter_map(Op::write).collect();
    let count = writes.len();
    let together = store.apply(&writes, known).await;
    drop(writes);
    let mut error = match together {
        Ok(()) => {
            batch.into_iter().for_each(|op| op.finish(Ok(())));
            return;
        }
        Err(error) => Some(error),
    };
    if count > 1 {
        if let Some(error) = error.take() {
            tracing::warn!(error = %error, writes = count, "a batch of state store writes failed; retrying them one by one");
        }
    }
    for op in batch {
        let result = match op.write() {
            // The batch's only write: its error is this write's.
            Some(_) if count == 1 => error.take().map_or(Ok(()), Err),
            Some(write) => store.apply(&[write], known).await,
            None => Ok(()),
        };
        op.finish(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{now_ms, AgentRecord, NewRunner};
    use shoes_vz_model::{ResourceSpec, ResourceType, RunnerId};
    use sqlx::Connection;

    fn runner() -> RunnerRecord {
        let placed = NewRunner {
            runner_name: "myshoes-writer-test".into(),
            agent_id: AgentId::generate(),
            template: "linux".into(),
            resource_type: ResourceType::Small,
            spec: ResourceSpec {
                vcpus: 1,
                memory_mib: 512,
            },
            labels: Vec::new(),
        };
        RunnerRecord::new(RunnerId::generate(), placed, now_ms())
    }

    fn agent() -> AgentRecord {
        AgentRecord {
            agent_id: AgentId::generate(),
            hostname: "mac-1".into(),
            backend: "test".into(),
            max_runners: 2,
            cpu_cores: 4,
            memory_mib: 4096,
            templates: Vec::new(),
            online: true,
            last_seen_ms: now_ms(),
            registered_at_ms: now_ms(),
            credential_hash: String::new(),
            credential_confirmed: false,
            revoked: false,
            cordoned: false,
            version: String::new(),
        }
    }

    async fn open() -> (tempfile::TempDir, String, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("state.db").display()
        );
        let store = Store::open(&url).await.expect("open");
        (dir, url, store)
    }

    // One thread: nothing runs the writer until the test awaits, so the writes below are
    // queued together and go out as one batch.
    #[tokio::test(flavor = "current_thread")]
    async fn one_bad_write_in_a_batch_costs_only_itself() {
        let (_dir, _url, store) = open().await;
        let (writer, _task) = StoreWriter::spawn(store.clone());
        let (first, stranger, last) = (runner(), runner(), runner());
        let inserted_first = writer.insert_runner(first.clone());
        let updated_stranger = writer.update_runner_durably(stranger.clone());
        let inserted_last = writer.insert_runner(last.clone());
        assert_eq!(writer.queued(), 3);
        inserted_first.await.expect("the first insert lands");
        let refused = updated_stranger
            .await
            .expect_err("the store never had this runner");
        assert!(
            matches!(refused, WriteError::Store(StoreError::NotFound { .. })),
            "{refused}"
        );
        inserted_last.await.expect("the last insert lands");
        for kept in [&first, &last] {
            assert!(store
                .get_runner(&kept.runner_id)
                .await
                .expect("read")
                .is_some());
        }
        writer.flush().await;
        assert_eq!((writer.queued(), writer.lag()), (0, Duration::ZERO));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_database_holds_new_work_back_until_it_catches_up() {
        let (_dir, url, store) = open().await;
        let (writer, _task) = StoreWriter::spawn(store.clone());
        // Another connection holds SQLite's write lock: the writer's next commit waits.
        let mut blocker = sqlx::AnyConnection::connect(&url).await.expect("connect");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut blocker)
            .await
            .expect("take the write lock");
        let agents: Vec<AgentRecord> = (0..=HIGH_WATER + MAX_BATCH).map(|_| agent()).collect();
        for record in &agents {
            writer.upsert_agent(record.clone());
        }
        assert!(writer.queued() >= HIGH_WATER, "{}", writer.queued());
        let behind = writer
            .wait_for_room(Duration::from_millis(200))
            .await
            .expect_err("the backlog is over the high-water mark");
        assert!(matches!(behind, WriteError::Behind { .. }), "{behind}");
        assert!(behind.to_string().contains("writes behind"), "{behind}");
        assert!(
            writer.lag() >= Duration::from_millis(200),
            "{:?}",
            writer.lag()
        );

        sqlx::query("COMMIT")
            .execute(&mut blocker)
            .await
            .expect("release the write lock");
        writer
            .wait_for_room(Duration::from_secs(30))
            .await
            .expect("room once the database is back");
        writer.flush().await;
        assert_eq!(
            store.list_agents().await.expect("agents").len(),
            agents.len(),
            "every queued write landed"
        );
        assert_eq!(writer.lag(), Duration::ZERO);
    }
}
