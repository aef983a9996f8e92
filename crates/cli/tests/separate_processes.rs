//! Trust and failure with the server and agents as separate processes (the real binaries, the
//! test backend): impostors, revocation, a black-holed link, and kill -9 of either side.

mod common;

use common::processes::*;
use common::{add_request, bundles};
use shoes_vz_cli::fleet_client::FleetClient;
use shoes_vz_model::RunnerId;
use shoes_vz_protocol::agent::v1 as agent_pb;
use shoes_vz_protocol::agent::v1::agent_service_client::AgentServiceClient;
use shoes_vz_protocol::operator::v1 as op;
use shoes_vz_protocol::shoes::v1 as pb;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

async fn online(client: &mut FleetClient, agent: &AgentProcess) {
    let id_known = || !agent.agent_id().is_empty();
    eventually(
        "the agent to have an id",
        Duration::from_secs(30),
        || async { id_known() },
    )
    .await;
    let id = agent.agent_id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent_status(client, &id).await.as_deref() != Some("online") {
        assert!(
            Instant::now() < deadline,
            "agent {id} never came online: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn running(client: &mut FleetClient, name: &str, script: &str) -> String {
    let cloud_id = client
        .add_instance(add_request(name, script))
        .await
        .unwrap_or_else(|status| panic!("add {name}: {status:?}"))
        .into_inner()
        .cloud_id;
    common::wait_state(client, &cloud_id, "running").await;
    cloud_id
}

/// A raw agent-protocol client presenting `token`.
async fn agent_client(
    server: &ServerProcess,
    token: &str,
) -> AgentServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        shoes_vz_protocol::client::BearerToken,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    AgentServiceClient::with_interceptor(
        channel,
        shoes_vz_protocol::client::bearer(token).expect("token"),
    )
}

fn registration(agent_id: &str) -> agent_pb::RegisterAgentRequest {
    agent_pb::RegisterAgentRequest {
        agent_id: agent_id.to_string(),
        hostname: "impostor".into(),
        capacity: Some(agent_pb::AgentCapacity {
            max_runners: 8,
            cpu_cores: 64,
            memory_mib: 65536,
        }),
        templates: Vec::new(),
        backend: "test".into(),
        version: "0".into(),
    }
}

/// Opens Sync as `agent_id` with an empty snapshot (what took over a live agent before).
async fn impostor_sync(server: &ServerProcess, token: &str, agent_id: &str) -> tonic::Status {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(agent_pb::AgentMessage {
            message: Some(agent_pb::agent_message::Message::Hello(agent_pb::Hello {
                agent_id: agent_id.to_string(),
            })),
        })
        .await;
    let _ = tx
        .send(agent_pb::AgentMessage {
            message: Some(agent_pb::agent_message::Message::Snapshot(
                agent_pb::Snapshot { runners: vec![] },
            )),
        })
        .await;
    let mut client = agent_client(server, token).await;
    match client
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(mut stream) => match stream.get_mut().message().await {
            Err(status) => status,
            Ok(message) => panic!("the impostor got a session: {message:?}"),
        },
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_is_refused_and_the_agent_it_names_keeps_its_runners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("server"), &ServerSettings::default()).await;
    let agent = AgentProcess::start(&dir.path().join("agent"), &server.url(), 2);
    let mut client = server.client().await;
    online(&mut client, &agent).await;
    let victim = agent.agent_id();
    let cloud_id = running(&mut client, "myshoes-victim", "true\n").await;
    assert!(
        std::fs::metadata(agent.dir.join("agent-credential")).is_ok(),
        "the agent keeps its own credential"
    );

    // The enrollment token, a made-up credential, and nothing: none gets in as the victim.
    for token in [
        ENROLLMENT_TOKEN,
        "svzagent_00000000000000000000000000000000",
        SHOES_TOKEN,
    ] {
        let status = agent_client(&server, token)
            .await
            .register_agent(registration(&victim))
            .await
            .expect_err("re-registering someone else");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = impostor_sync(&server, token, &victim).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // The victim's session is untouched: its runner is still there and it still takes work.
    assert_eq!(common::get(&mut client, &cloud_id).await.state, "running");
    running(&mut client, "myshoes-after-impostor", "true\n").await;
    assert_eq!(
        agent_status(&mut client, &victim).await.as_deref(),
        Some("online")
    );
    assert_eq!(bundles(&agent.runners_dir()), 2);
    let metrics = server.metrics_text().await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("shoesvz_auth_refused_total{service=\"agent\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 6, "refusals counted: {metrics}");
    assert!(server.log().contains("refused an agent"), "refusals logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_loses_its_runners_and_cannot_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("server"), &ServerSettings::default()).await;
    let mut agent = AgentProcess::start(&dir.path().join("agent"), &server.url(), 2);
    let mut client = server.client().await;
    online(&mut client, &agent).await;
    let agent_id = agent.agent_id();
    let cloud_id = running(&mut client, "myshoes-on-revoked", "true\n").await;

    let revoked = client
        .operator
        .revoke_agent(op::RevokeAgentRequest {
            agent_id: agent_id.clone(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(revoked.status, "revoked");
    let runner = common::get(&mut client, &cloud_id).await;
    assert_eq!(runner.state, "deleted");
    assert!(runner.error.contains("revoked"), "{}", runner.error);
    let runners_dir = agent.runners_dir();
    eventually(
        "the revoked agent to destroy its VMs",
        Duration::from_secs(20),
        || async { bundles(&runners_dir) == 0 },
    )
    .await;

    // Restarted, with its credential, it is still refused.
    agent.kill9();
    agent.restart();
    eventually(
        "the restarted agent to be refused",
        Duration::from_secs(20),
        || async { agent.log().contains("refused this agent for good") },
    )
    .await;
    assert_eq!(
        agent_status(&mut client, &agent_id).await.as_deref(),
        Some("revoked")
    );
    // The fleet has no agent left to place on: the runner cannot be placed anywhere now.
    let mut request = add_request("myshoes-nowhere", "true\n");
    request.labels = vec!["self-hosted".into()];
    let refused = client.add_instance(request).await.expect_err("no agent");
    assert_ne!(refused.code(), Code::Ok);
}

/// A TCP proxy that can swallow everything in both directions without closing anything.
struct Proxy {
    addr: SocketAddr,
    black_hole: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listens");
        let addr = listener.local_addr().expect("proxy addr");
        let black_hole = Arc::new(AtomicBool::new(false));
        let hole = Arc::clone(&black_hole);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, Arc::clone(&hole)));
                tokio::spawn(pump(out_read, in_write, Arc::clone(&hole)));
            }
        });
        Proxy {
            addr,
            black_hole,
            task,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes until either side closes; while the hole is open, bytes are read and lost.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    black_hole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if !black_hole.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_link_is_noticed_on_both_sides_and_the_agent_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = ServerSettings::default();
    let deadline = settings.agent_offline_after;
    let server = ServerProcess::start(&dir.path().join("server"), &settings).await;
    let proxy = Proxy::start(server.addr).await;
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &format!("http://{}", proxy.addr),
        2,
    );
    let mut client = server.client().await;
    online(&mut client, &agent).await;
    let agent_id = agent.agent_id();
    let cloud_id = running(&mut client, "myshoes-through-the-hole", "true\n").await;
    assert_eq!(agent.connected(), Some(true));

    proxy.black_hole.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (mut server_saw, mut agent_saw) = (None, None);
    while server_saw.is_none() || agent_saw.is_none() {
        assert!(
            started.elapsed() < deadline * 4,
            "the dead link went unnoticed (server {server_saw:?}, agent {agent_saw:?})"
        );
        if server_saw.is_none()
            && agent_status(&mut client, &agent_id).await.as_deref() == Some("offline")
        {
            server_saw = Some(started.elapsed());
        }
        if agent_saw.is_none() && agent.connected() == Some(false) {
            agent_saw = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (server_saw, agent_saw) = (
        server_saw.unwrap_or_default(),
        agent_saw.unwrap_or_default(),
    );
    eprintln!("dead link noticed: server after {server_saw:?}, agent after {agent_saw:?} (deadline {deadline:?})");
    // The deadline, plus one housekeeping tick and one heartbeat of slack.
    let limit = deadline + settings.heartbeat_interval + Duration::from_secs(1);
    assert!(server_saw <= limit, "server noticed after {server_saw:?}");
    assert!(agent_saw <= limit, "agent noticed after {agent_saw:?}");

    proxy.black_hole.store(false, Ordering::SeqCst);
    online(&mut client, &agent).await;
    let runner = common::get(&mut client, &cloud_id).await;
    assert_eq!(runner.state, "running", "the runner survived the outage");
    assert_eq!(bundles(&agent.runners_dir()), 1, "no duplicate VM");
    assert_eq!(client.list_runners(false).await.expect("list").len(), 1);
    let metrics = server.metrics_text().await;
    let misses = metrics
        .lines()
        .find(|l| l.starts_with("shoesvz_heartbeat_misses_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(misses >= 1, "the dead link is counted: {metrics}");
}

/// myshoes' retry of a job: the same runner_name until it gets an answer.
async fn add_until_answered(client: &mut FleetClient, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.add_instance(add_request(name, "true\n")).await {
            Ok(reply) => return reply.into_inner().cloud_id,
            Err(status) => {
                assert_ne!(status.code(), Code::InvalidArgument, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "{name} never answered: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_add_and_delete_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server =
        ServerProcess::start(&dir.path().join("server"), &ServerSettings::default()).await;
    // Room for every job: the runners here never finish, so a queued retry would wait forever.
    // Slow VMs, so the adds are still waiting when the server dies.
    let agent = AgentProcess::start_with(
        &dir.path().join("agent"),
        &server.url(),
        8,
        Duration::from_secs(3),
    );
    let mut client = server.client().await;
    online(&mut client, &agent).await;
    let first = running(&mut client, "myshoes-before-kill", "true\n").await;

    // A burst of adds (more than the slots) and a delete, all in flight when the server dies.
    let names: Vec<String> = (0..5).map(|i| format!("myshoes-kill-{i}")).collect();
    let mut calls = tokio::task::JoinSet::new();
    for name in &names {
        let mut client = client.clone();
        let name = name.clone();
        calls.spawn(async move {
            let reply = client.add_instance(add_request(&name, "true\n")).await;
            (name, reply.map(|r| r.into_inner().cloud_id))
        });
    }
    {
        let mut client = client.clone();
        let first = first.clone();
        calls.spawn(async move {
            let reply = client
                .delete_instance(pb::DeleteInstanceRequest {
                    cloud_id: first,
                    labels: vec![],
                })
                .await;
            ("delete".to_string(), reply.map(|_| String::new()))
        });
    }
    eventually("runners to be placed", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move { client.list_runners(false).await.map_or(0, |r| r.len()) >= 3 }
    })
    .await;
    let before: BTreeMap<String, String> = client
        .list_runners(false)
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.runner_name, r.cloud_id))
        .collect();
    server.kill9();
    let mut issued: Vec<String> = vec![first.clone()];
    let mut cut = Vec::new();
    while let Some(result) = calls.join_next().await {
        let (name, reply) = result.expect("call task");
        match reply {
            Ok(cloud_id) if !cloud_id.is_empty() => issued.push(cloud_id),
            Ok(_) => {}
            Err(_) if name != "delete" => cut.push(name),
            Err(_) => {}
        }
    }
    assert!(!cut.is_empty(), "the kill cut some adds");

    server.restart().await;
    let mut client = server.client().await;
    online(&mut client, &agent).await;
    // myshoes retries each cut job under its name: a runner that booted meanwhile is attached.
    for name in &cut {
        let cloud_id = add_until_answered(&mut client, name).await;
        if let Some(before) = before.get(name) {
            let runner = common::get(&mut client, before).await;
            if runner.state != "deleted" && runner.error.is_empty() {
                assert_eq!(
                    &cloud_id, before,
                    "the retry of {name} attached to its runner"
                );
            }
        }
        issued.push(cloud_id);
    }
    // Every cloud_id ever handed out can be deleted.
    for cloud_id in &issued {
        match client
            .delete_instance(pb::DeleteInstanceRequest {
                cloud_id: cloud_id.clone(),
                labels: vec![],
            })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound && cloud_id == &first => {}
            Err(status) => panic!("{cloud_id} cannot be deleted: {status:?}"),
        }
    }
    // Nothing leaks: the VMs go, and runners nobody claimed go after the grace.
    let runners_dir = agent.runners_dir();
    eventually("every VM to be gone", Duration::from_secs(60), || async {
        bundles(&runners_dir) == 0
    })
    .await;
    eventually("no live runner left", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move { client.list_runners(false).await.is_ok_and(|r| r.is_empty()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_nothing_once_restarted_and_the_fleet_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&dir.path().join("server"), &ServerSettings::default()).await;
    let mut agent = AgentProcess::start(&dir.path().join("agent"), &server.url(), 2);
    let mut client = server.client().await;
    online(&mut client, &agent).await;
    // A setup script that leaves its process group, as a runner's service may.
    let script = "setsid sleep 600 >/dev/null 2>&1 < /dev/null &\nsleep 600\n";
    let cloud_id = running(&mut client, "myshoes-orphan-maker", script).await;
    let runner_id =
        RunnerId::parse(&common::get(&mut client, &cloud_id).await.runner_id).expect("runner id");
    use shoes_vz_agent::hypervisor::test_backend::marked;
    eventually(
        "the script's processes to run",
        Duration::from_secs(20),
        || async { marked::scan(&runner_id).len() >= 2 },
    )
    .await;

    agent.kill9();
    let killed = Instant::now();
    agent.restart();
    let runners_dir = agent.runners_dir();
    eventually(
        "the dead agent's VM to be cleaned up",
        Duration::from_secs(10),
        || async { bundles(&runners_dir) == 0 && marked::scan(&runner_id).is_empty() },
    )
    .await;
    eprintln!("nothing left {:?} after the kill", killed.elapsed());
    let runner = common::wait_state(&mut client, &cloud_id, "deleted").await;
    assert!(
        runner.error.contains("no longer has this runner"),
        "{}",
        runner.error
    );
    online(&mut client, &agent).await;
    running(&mut client, "myshoes-after-crash", "true\n").await;
}
