//! The load myshoes puts on the server, through ShoesService with myshoes' token: C workers
//! each looping AddInstance → DeleteInstance, or filling every slot and emptying them again.

use shoes_vz_protocol::client::{connect_shoes, ConnectOptions, ShoesClient};
use shoes_vz_protocol::shoes::v1 as pb;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// myshoes' calls wait up to 5 minutes; the server answers within its add_instance (4 min).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Workers per load connection (HTTP/2 streams on one connection are limited, ~200).
const WORKERS_PER_CONNECTION: usize = 32;
/// What the runners would run; a simulated agent never runs it.
const SETUP_SCRIPT: &str =
    "#!/bin/bash\n# shoes-vz bench fleet: simulated agents never run this\nexit 0\n";

/// Latencies of successful calls, and the failures.
#[derive(Debug, Default, Clone)]
pub struct Calls {
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Calls {
    fn record(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(latency) => self.latencies.push(latency),
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }
}

/// One concurrency level of add+delete pairs.
#[derive(Debug, Default)]
pub struct PairsResult {
    pub concurrency: usize,
    pub wall: Duration,
    /// AddInstance latency minus the boot delay: the control plane's overhead.
    pub add: Calls,
    pub delete: Calls,
}

impl PairsResult {
    /// Pairs whose add and delete both succeeded.
    pub fn pairs(&self) -> usize {
        self.delete.latencies.len()
    }
}

/// Every slot filled at once.
#[derive(Debug, Default)]
pub struct FillResult {
    pub wall: Duration,
    pub add: Calls,
    pub cloud_ids: Vec<String>,
}

pub struct Load {
    clients: Vec<ShoesClient>,
    boot_delay: Duration,
}

impl Load {
    pub async fn connect(
        addr: &str,
        token: &str,
        max_concurrency: usize,
        boot_delay: Duration,
    ) -> anyhow::Result<Load> {
        let options = ConnectOptions {
            tls_ca_pem: None,
            connect_timeout: Some(Duration::from_secs(5)),
        };
        let mut clients = Vec::new();
        for _ in 0..max_concurrency.div_ceil(WORKERS_PER_CONNECTION).max(1) {
            clients.push(connect_shoes(addr, token, &options).await?);
        }
        Ok(Load {
            clients,
            boot_delay,
        })
    }

    /// `count` add+delete pairs by `concurrency` workers.
    pub async fn pairs(&self, concurrency: usize, count: usize) -> PairsResult {
        let boot_delay = self.boot_delay;
        let started = Instant::now();
        let outcomes = self
            .spread(concurrency, count, move |mut client, _| async move {
                let added = add(&mut client, boot_delay).await;
                let deleted = match &added {
                    Ok((_, cloud_id)) => Some(delete(&mut client, cloud_id.clone()).await),
                    Err(_) => None,
                };
                (added.map(|(latency, _)| latency), deleted)
            })
            .await;
        let mut result = PairsResult {
            concurrency,
            wall: started.elapsed(),
            ..PairsResult::default()
        };
        for (added, deleted) in outcomes {
            result.add.record(added);
            if let Some(deleted) = deleted {
                result.delete.record(deleted);
            }
        }
        result
    }

    /// `count` AddInstance calls, `concurrency` at a time, kept live.
    pub async fn fill(&self, concurrency: usize, count: usize) -> FillResult {
        let boot_delay = self.boot_delay;
        let started = Instant::now();
        let outcomes = self
            .spread(concurrency, count, move |mut client, _| async move {
                add(&mut client, boot_delay).await
            })
            .await;
        let mut result = FillResult {
            wall: started.elapsed(),
            ..FillResult::default()
        };
        for outcome in outcomes {
            result.add.record(outcome.map(|(latency, cloud_id)| {
                result.cloud_ids.push(cloud_id);
                latency
            }));
        }
        result
    }

    /// DeleteInstance of every id, `concurrency` at a time; returns the calls and the wall time.
    pub async fn delete_all(
        &self,
        concurrency: usize,
        cloud_ids: Vec<String>,
    ) -> (Calls, Duration) {
        let started = Instant::now();
        let ids = Arc::new(cloud_ids);
        let count = ids.len();
        let outcomes = self
            .spread(concurrency, count, move |mut client, ticket| {
                let ids = Arc::clone(&ids);
                async move {
                    match ids.get(ticket) {
                        Some(cloud_id) => delete(&mut client, cloud_id.clone()).await,
                        None => Err("no such ticket".to_string()),
                    }
                }
            })
            .await;
        let mut calls = Calls::default();
        for outcome in outcomes {
            calls.record(outcome);
        }
        (calls, started.elapsed())
    }

    /// Runs `job` `count` times on `concurrency` worker tasks (each takes the next ticket when
    /// it is done), spread over the load's connections.
    async fn spread<F, Fut, T>(&self, concurrency: usize, count: usize, job: F) -> Vec<T>
    where
        F: Fn(ShoesClient, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        let job = Arc::new(job);
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for worker in 0..concurrency.clamp(1, count.max(1)) {
            let client = self.clients[worker % self.clients.len()].clone();
            let (job, next) = (Arc::clone(&job), Arc::clone(&next));
            workers.spawn(async move {
                let mut done = Vec::new();
                loop {
                    let ticket = next.fetch_add(1, Ordering::Relaxed);
                    if ticket >= count {
                        return done;
                    }
                    done.push(job(client.clone(), ticket).await);
                }
            });
        }
        let mut all = Vec::with_capacity(count);
        while let Some(done) = workers.join_next().await {
            // A worker only ends by running out of tickets; a panic would be a bug here.
            if let Ok(done) = done {
                all.extend(done);
            }
        }
        all
    }
}

/// AddInstance as myshoes sends it; returns the overhead (latency minus the boot delay) and
/// the cloud id.
async fn add(client: &mut ShoesClient, boot_delay: Duration) -> Result<(Duration, String), String> {
    let request = pb::AddInstanceRequest {
        runner_name: format!("myshoes-{}", uuid::Uuid::new_v4()),
        setup_script: SETUP_SCRIPT.to_string(),
        resource_type: pb::ResourceType::Nano as i32,
        labels: vec!["self-hosted".into(), "bench".into()],
    };
    let started = Instant::now();
    let reply = timed(client.add_instance(request)).await?;
    Ok((
        started.elapsed().saturating_sub(boot_delay),
        reply.into_inner().cloud_id,
    ))
}

async fn delete(client: &mut ShoesClient, cloud_id: String) -> Result<Duration, String> {
    let started = Instant::now();
    timed(client.delete_instance(pb::DeleteInstanceRequest {
        cloud_id,
        labels: Vec::new(),
    }))
    .await?;
    Ok(started.elapsed())
}

async fn timed<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}
