//! Store tests on a SQLite file; `postgres_round_trip` runs the shared checks on PostgreSQL
//! when SHOESVZ_TEST_POSTGRES_URL is set.

use super::*;
use shoes_vz_model::{AgentId, ResourceSpec, ResourceType, RunnerId, RunnerState};

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("state.db").display()
    )
}

async fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let store = Store::open(&sqlite_url(&dir))
        .await
        .expect("open SQLite store");
    (dir, store)
}

fn agent(hostname: &str) -> AgentRecord {
    AgentRecord {
        agent_id: AgentId::generate(),
        hostname: hostname.to_string(),
        backend: "vz".to_string(),
        max_runners: 2,
        cpu_cores: 10,
        memory_mib: 32 * 1024,
        templates: vec![TemplateRecord {
            os: "macOS".into(),
            arch: "ARM64".into(),
            name: "macos-15".to_string(),
            version: "2025.01".to_string(),
            backend: "vz".to_string(),
            labels: vec!["macos".to_string(), "arm64".to_string()],
            max_vcpus: 8,
            max_memory_mib: 24 * 1024,
        }],
        online: true,
        last_seen_ms: 1_700_000_000_000,
        registered_at_ms: 1_700_000_000_000,
        credential_hash: "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8".into(),
        credential_confirmed: true,
        revoked: false,
        cordoned: true,
        version: "0.1.0".into(),
    }
}

/// A runner with empty labels and no timings; `created_at_ms` orders listings.
fn runner(agent_id: &AgentId, created_at_ms: i64) -> RunnerRecord {
    RunnerRecord::new(
        RunnerId::generate(),
        NewRunner {
            runner_name: "myshoes-1c6f1f80-52b6-4a4c-8a4e-1c0d7d3c9d1e".to_string(),
            agent_id: agent_id.clone(),
            template: "macos-15".to_string(),
            resource_type: ResourceType::Large,
            spec: ResourceSpec {
                vcpus: 4,
                memory_mib: 8192,
            },
            labels: Vec::new(),
        },
        created_at_ms,
    )
}

/// Changes every mutable field, including timings None → Some and labels.
fn advance(mut r: RunnerRecord, agent_id: &AgentId) -> RunnerRecord {
    r.runner_name = "myshoes-renamed".to_string();
    r.agent_id = agent_id.clone();
    r.template = "macos-15-xcode".to_string();
    r.resource_type = ResourceType::Xlarge2;
    r.vcpus = 6;
    r.memory_mib = u64::try_from(i64::MAX).expect("i64::MAX fits u64");
    r.labels = vec!["self-hosted".to_string(), "macOS \"quoted\" ✓".to_string()];
    r.state = RunnerState::Running;
    r.delete_requested = true;
    r.ip_address = "192.168.64.7".to_string();
    r.guest_runner_state = "listening".to_string();
    r.error = "not really".to_string();
    r.answered = true;
    r.end_reason = "the runner finished its job".to_string();
    r.job_started_at_ms = Some(1_700_000_100_000);
    r.job_finished_at_ms = Some(1_700_000_200_000);
    r.updated_at_ms += 5_000;
    r.timings = Timings {
        clone_ms: Some(0),
        boot_to_ip_ms: Some(1_234),
        boot_to_ssh_ms: Some(2_345),
        setup_ms: None,
        startup_ms: Some(u64::try_from(i64::MAX).expect("fits")),
        queue_ms: Some(17),
        prepare_ms: Some(41),
        vm_start_ms: Some(12),
        refresh_ms: None,
    };
    r
}

/// Round trip shared by the SQLite and PostgreSQL tests; ids are fresh so reruns against
/// one database do not collide.
async fn round_trip(store: &Store) {
    let host = agent("mac-1");
    store.upsert_agent(&host).await.expect("upsert agent");
    let other = agent("mac-2");
    store
        .upsert_agent(&other)
        .await
        .expect("upsert other agent");

    let base = now_ms();
    let plain = runner(&host.agent_id, base);
    let mut full = advance(runner(&host.agent_id, base + 1), &other.agent_id);
    full.state = RunnerState::Creating;
    store.insert_runner(&plain).await.expect("insert plain");
    store.insert_runner(&full).await.expect("insert full");

    let got = store.get_runner(&plain.runner_id).await.expect("get plain");
    assert_eq!(got.as_ref(), Some(&plain));
    let got = store.get_runner(&full.runner_id).await.expect("get full");
    assert_eq!(got.as_ref(), Some(&full));
    assert_eq!(
        store
            .get_runner(&RunnerId::generate())
            .await
            .expect("get unknown"),
        None
    );

    let listed = store.list_runners(true).await.expect("list");
    let ours: Vec<&RunnerRecord> = listed
        .iter()
        .filter(|r| r.runner_id == plain.runner_id || r.runner_id == full.runner_id)
        .collect();
    assert_eq!(ours, vec![&plain, &full], "ordered by created_at_ms");

    let updated = advance(plain.clone(), &other.agent_id);
    store.update_runner(&updated).await.expect("update");
    let got = store
        .get_runner(&plain.runner_id)
        .await
        .expect("get updated");
    assert_eq!(got, Some(updated.clone()));
    assert_eq!(got.map(|r| r.cloud_id()), Some(plain.cloud_id()));

    // Some → None must clear, not keep the old value.
    let mut cleared = updated.clone();
    cleared.timings = Timings::default();
    cleared.labels.clear();
    store.update_runner(&cleared).await.expect("clear timings");
    let got = store
        .get_runner(&plain.runner_id)
        .await
        .expect("get cleared");
    assert_eq!(got, Some(cleared));

    let history = store.history(&plain.runner_id).await.expect("history");
    let states: Vec<RunnerState> = history.iter().map(|c| c.state).collect();
    assert_eq!(states, vec![RunnerState::Creating, RunnerState::Running]);
    assert_eq!(history[0].seq, 1);
    assert_eq!(history[0].at_ms, plain.created_at_ms);
    assert_eq!(history[1].seq, 2);
    assert_eq!(history[1].at_ms, updated.updated_at_ms);
    assert_eq!(history[1].detail, "not really");

    let agents = store.list_agents().await.expect("list agents");
    assert!(agents.contains(&host));
    assert!(agents.contains(&other));

    assert!(matches!(
        store.insert_runner(&plain).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.update_runner(&runner(&host.agent_id, base)).await,
        Err(StoreError::NotFound { kind: "runner", .. })
    ));
}

#[tokio::test]
async fn runner_round_trip_keeps_every_field() {
    let (_dir, store) = open_temp().await;
    round_trip(&store).await;
}

#[tokio::test]
async fn history_grows_on_state_change_only() {
    let (_dir, store) = open_temp().await;
    let mut r = runner(&AgentId::generate(), 1_000);
    store.insert_runner(&r).await.expect("insert");

    let steps = [
        (RunnerState::Creating, ""),
        (RunnerState::Booting, ""),
        (RunnerState::Booting, ""),
        (RunnerState::SshReady, ""),
        (RunnerState::SshReady, ""),
        (RunnerState::Error, "vm crashed"),
        (RunnerState::Deleted, ""),
    ];
    for (i, (state, error)) in steps.into_iter().enumerate() {
        r.state = state;
        r.error = error.to_string();
        r.guest_runner_state = format!("step {i}");
        r.updated_at_ms = 2_000 + i as i64;
        store.update_runner(&r).await.expect("update");
    }

    let history = store.history(&r.runner_id).await.expect("history");
    let got: Vec<(i64, RunnerState, i64, &str)> = history
        .iter()
        .map(|c| (c.seq, c.state, c.at_ms, c.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, RunnerState::Creating, 1_000, ""),
            (2, RunnerState::Booting, 2_001, ""),
            (3, RunnerState::SshReady, 2_003, ""),
            (4, RunnerState::Error, 2_005, "vm crashed"),
            (5, RunnerState::Deleted, 2_006, ""),
        ]
    );
    assert!(store
        .history(&RunnerId::generate())
        .await
        .expect("history of unknown")
        .is_empty());
}

#[tokio::test]
async fn duplicate_insert_is_a_conflict() {
    let (_dir, store) = open_temp().await;
    let r = runner(&AgentId::generate(), 1);
    store.insert_runner(&r).await.expect("first insert");
    let mut again = r.clone();
    again.runner_name = "someone-else".to_string();
    let err = store.insert_runner(&again).await.expect_err("duplicate");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains(r.cloud_id().as_str()), "{err}");
    // The failed insert left neither a second row nor a history entry.
    assert_eq!(store.list_runners(true).await.expect("list").len(), 1);
    assert_eq!(store.history(&r.runner_id).await.expect("history").len(), 1);
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let (_dir, store) = open_temp().await;
    let err = store
        .update_runner(&runner(&AgentId::generate(), 1))
        .await
        .expect_err("unknown runner");
    assert!(
        matches!(err, StoreError::NotFound { kind: "runner", .. }),
        "{err:?}"
    );
    let err = store
        .set_agent_online(&AgentId::generate(), true, 1)
        .await
        .expect_err("unknown agent");
    assert!(
        matches!(err, StoreError::NotFound { kind: "agent", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn reopening_the_file_sees_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir);
    let host = agent("mac-1");
    let first = runner(&host.agent_id, 10);
    let second = advance(runner(&host.agent_id, 20), &host.agent_id);
    {
        let store = Store::open(&url).await.expect("open");
        store.upsert_agent(&host).await.expect("agent");
        store.insert_runner(&first).await.expect("first");
        store.insert_runner(&second).await.expect("second");
        store
            .set_agent_online(&host.agent_id, false, 99)
            .await
            .expect("offline");
        store.pool.close().await;
    }
    // Opening again must not re-run migrations or lose rows: the server-restart guarantee.
    let store = Store::open(&url).await.expect("reopen");
    let mut expected_agent = host.clone();
    expected_agent.online = false;
    expected_agent.last_seen_ms = 99;
    assert_eq!(
        store.list_agents().await.expect("agents"),
        vec![expected_agent]
    );
    assert_eq!(
        store.list_runners(true).await.expect("runners"),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        store
            .history(&second.runner_id)
            .await
            .expect("history")
            .len(),
        1
    );
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM schema_version")
        .fetch_one(&store.pool)
        .await
        .expect("count versions");
    assert_eq!(versions, migrate::latest());
}

#[tokio::test]
async fn upserting_an_agent_twice_keeps_one_row_with_new_values() {
    let (_dir, store) = open_temp().await;
    let mut a = agent("mac-1");
    store.upsert_agent(&a).await.expect("first");
    a.hostname = "mac-1.local".to_string();
    a.max_runners = 1;
    a.templates.push(TemplateRecord {
        os: "macOS".into(),
        arch: "ARM64".into(),
        name: "ubuntu-24.04".to_string(),
        version: "1".to_string(),
        backend: "vz".to_string(),
        labels: vec![],
        max_vcpus: 4,
        max_memory_mib: 4096,
    });
    a.online = false;
    a.registered_at_ms += 1;
    store.upsert_agent(&a).await.expect("second");
    assert_eq!(store.list_agents().await.expect("list"), vec![a.clone()]);

    store
        .set_agent_online(&a.agent_id, true, 123)
        .await
        .expect("online");
    let listed = store.list_agents().await.expect("list");
    assert!(listed[0].online);
    assert_eq!(listed[0].last_seen_ms, 123);
}

#[tokio::test]
async fn listing_without_deleted_hides_deleted_runners() {
    let (_dir, store) = open_temp().await;
    let agent_id = AgentId::generate();
    let live = runner(&agent_id, 1);
    let mut gone = runner(&agent_id, 2);
    let mut failed = runner(&agent_id, 3);
    for r in [&live, &gone, &failed] {
        store.insert_runner(r).await.expect("insert");
    }
    gone.state = RunnerState::Deleted;
    failed.state = RunnerState::Error;
    store.update_runner(&gone).await.expect("delete");
    store.update_runner(&failed).await.expect("fail");

    let ids = |rs: Vec<RunnerRecord>| rs.into_iter().map(|r| r.runner_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_runners(false).await.expect("live")),
        vec![live.runner_id.clone(), failed.runner_id.clone()]
    );
    assert_eq!(
        ids(store.list_runners(true).await.expect("all")),
        vec![
            live.runner_id.clone(),
            gone.runner_id.clone(),
            failed.runner_id.clone()
        ]
    );

    // Ended on its own after an answer, not yet deleted by myshoes: kept at start.
    let mut finished = runner(&agent_id, 4);
    store.insert_runner(&finished).await.expect("insert");
    finished.state = RunnerState::Deleted;
    finished.answered = true;
    store.update_runner(&finished).await.expect("finish");
    let unreleased = || async { ids(store.list_unreleased_runners().await.expect("unreleased")) };
    assert_eq!(
        unreleased().await,
        vec![
            live.runner_id.clone(),
            failed.runner_id.clone(),
            finished.runner_id.clone()
        ]
    );
    finished.delete_requested = true;
    store.update_runner(&finished).await.expect("released");
    assert_eq!(unreleased().await, vec![live.runner_id, failed.runner_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_16_tasks_all_succeed() {
    let (_dir, store) = open_temp().await;
    let agent_id = AgentId::generate();
    let shared = runner(&agent_id, 0);
    store.insert_runner(&shared).await.expect("insert shared");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = store.clone();
        let agent_id = agent_id.clone();
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut own = runner(&agent_id, i + 1);
            store.insert_runner(&own).await.expect("insert own");
            for state in [
                RunnerState::Booting,
                RunnerState::SshReady,
                RunnerState::Running,
            ] {
                own.state = state;
                store.update_runner(&own).await.expect("update own");
                // Every task also writes the one shared runner, alternating its state.
                let mut s = shared.clone();
                s.state = if i % 2 == 0 {
                    RunnerState::Booting
                } else {
                    RunnerState::Running
                };
                s.guest_runner_state = format!("task {i}");
                store.update_runner(&s).await.expect("update shared");
            }
            own.runner_id
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ids.push(done.expect("task finished"));
    }
    assert_eq!(ids.len(), 16);
    for id in &ids {
        let history = store.history(id).await.expect("history");
        assert_eq!(history.len(), 4, "creating + 3 changes for {id}");
    }
    // Shared history: seqs are gap-free and consecutive entries always differ.
    let shared_history = store
        .history(&shared.runner_id)
        .await
        .expect("shared history");
    for (index, change) in shared_history.iter().enumerate() {
        assert_eq!(change.seq, index as i64 + 1);
    }
    for pair in shared_history.windows(2) {
        assert_ne!(pair[0].state, pair[1].state);
    }
    assert_eq!(store.list_runners(true).await.expect("list").len(), 17);
}

#[tokio::test]
async fn corrupt_rows_name_the_table_row_and_column() {
    let (_dir, store) = open_temp().await;
    let r = runner(&AgentId::generate(), 1);
    store.insert_runner(&r).await.expect("insert");
    sqlx::query("UPDATE runners SET state = 'ready', vcpus = -1 WHERE runner_id = $1")
        .bind(r.runner_id.as_str())
        .execute(&store.pool)
        .await
        .expect("corrupt the row");
    let err = store.get_runner(&r.runner_id).await.expect_err("corrupt");
    match &err {
        StoreError::Corrupt {
            table, column, row, ..
        } => {
            assert_eq!((*table, *column), ("runners", "vcpus"));
            assert_eq!(row, r.runner_id.as_str());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains(r.runner_id.as_str()), "{err}");
    assert!(matches!(
        store.list_runners(true).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn values_beyond_i64_are_refused_before_writing() {
    let (_dir, store) = open_temp().await;
    let mut r = runner(&AgentId::generate(), 1);
    r.timings.setup_ms = Some(u64::MAX);
    let err = store.insert_runner(&r).await.expect_err("too large");
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                field: "setup_ms",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(store.list_runners(true).await.expect("list").is_empty());
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir);
    let store = Store::open(&url).await.expect("open");
    sqlx::query("INSERT INTO schema_version (version, applied_at_ms) VALUES (999, 0)")
        .execute(&store.pool)
        .await
        .expect("pretend a newer server migrated");
    store.pool.close().await;
    let err = Store::open(&url).await.expect_err("newer schema");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_urls_fail_without_showing_passwords() {
    let err = Store::open("mysql://u:hunter2@db/x")
        .await
        .expect_err("unsupported");
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    // Nothing listens on port 1; the error must still hide the password.
    let err = open::open(
        "postgres://u:hunter2@127.0.0.1:1/x",
        std::time::Duration::from_secs(1),
    )
    .await
    .expect_err("unreachable");
    eprintln!(
        "unreachable PostgreSQL: {err}: {:?}",
        std::error::Error::source(&err)
    );
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");

    let err = Store::open("sqlite:///nonexistent-dir/state.db?mode=rwc")
        .await
        .expect_err("missing directory");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

#[tokio::test]
async fn now_ms_is_unix_millis() {
    let now = now_ms();
    assert!(now > 1_700_000_000_000 && now < 4_000_000_000_000, "{now}");
}

#[tokio::test]
async fn postgres_round_trip() {
    let Ok(url) = std::env::var("SHOESVZ_TEST_POSTGRES_URL") else {
        shoes_vz_test_support::prerequisite_missing(
            "postgres_round_trip did not run",
            "set SHOESVZ_TEST_POSTGRES_URL \
             (e.g. postgres://shoesvz:shoesvz@127.0.0.1:5432/shoesvz_test) to test PostgreSQL",
        );
        return;
    };
    let store = Store::open(&url).await.expect("open PostgreSQL store");
    round_trip(&store).await;
    batches(&store).await;
    retention(&store).await;
    // A second open (a restarted server) finds the schema current and the rows intact.
    let again = Store::open(&url).await.expect("reopen PostgreSQL store");
    round_trip(&again).await;

    // Concurrent updates of one runner keep a gap-free history (FOR UPDATE row lock).
    let shared = runner(&AgentId::generate(), now_ms());
    again.insert_runner(&shared).await.expect("insert shared");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = again.clone();
        let mut s = shared.clone();
        s.state = if i % 2 == 0 {
            RunnerState::Booting
        } else {
            RunnerState::Running
        };
        tasks.spawn(async move { store.update_runner(&s).await.expect("update shared") });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task finished");
    }
    let history = again.history(&shared.runner_id).await.expect("history");
    for (index, change) in history.iter().enumerate() {
        assert_eq!(change.seq, index as i64 + 1);
    }
    for pair in history.windows(2) {
        assert_ne!(pair[0].state, pair[1].state);
    }
}

/// Batches, shared by SQLite and PostgreSQL: a runner's whole life in one transaction keeps
/// every state in its history (the writer's known states stand in for reads), and a batch with
/// one bad write leaves nothing behind.
async fn batches(store: &Store) {
    let host = agent("mac-batch");
    let mut known = KnownStates::default();
    let first = runner(&host.agent_id, now_ms());
    let mut steps = vec![first.clone()];
    for state in [
        RunnerState::Booting,
        RunnerState::Booting, // a repeat: no history row
        RunnerState::SshReady,
        RunnerState::Running,
    ] {
        let mut next = steps.last().expect("a step").clone();
        next.state = state;
        next.updated_at_ms += 10;
        steps.push(next);
    }
    let mut writes = vec![Write::UpsertAgent(&host), Write::InsertRunner(&steps[0])];
    writes.extend(steps[1..].iter().map(Write::UpdateRunner));
    writes.push(Write::AgentOnline(&host.agent_id, false, 1_700_000_000_001));
    store.apply(&writes, &mut known).await.expect("one batch");
    let history: Vec<_> = store
        .history(&first.runner_id)
        .await
        .expect("history")
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        history,
        [
            RunnerState::Creating,
            RunnerState::Booting,
            RunnerState::SshReady,
            RunnerState::Running
        ]
    );
    let stored = known.get(&first.runner_id).expect("known");
    assert_eq!(
        (stored.state, stored.last_seq),
        (Some(RunnerState::Running), 4)
    );
    let stored = store.list_agents().await.expect("agents");
    let stored = stored
        .iter()
        .find(|a| a.agent_id == host.agent_id)
        .expect("the agent");
    assert!(!stored.online, "the batch's last write won");

    // Known states replace the read: an update after the batch still appends exactly once.
    let mut deleted = steps.last().expect("a step").clone();
    deleted.state = RunnerState::Deleted;
    store
        .apply(&[Write::UpdateRunner(&deleted)], &mut known)
        .await
        .expect("delete");
    assert_eq!(store.history(&first.runner_id).await.expect("h").len(), 5);
    assert_eq!(
        known.get(&first.runner_id),
        None,
        "deleted runners are forgotten"
    );

    // All or nothing: an update of a runner the store never had fails the whole batch.
    let second = runner(&host.agent_id, now_ms());
    let stranger = runner(&host.agent_id, now_ms());
    let failed = store
        .apply(
            &[Write::InsertRunner(&second), Write::UpdateRunner(&stranger)],
            &mut known,
        )
        .await
        .expect_err("the stranger is unknown");
    assert!(matches!(failed, StoreError::NotFound { .. }), "{failed}");
    assert!(store
        .get_runner(&second.runner_id)
        .await
        .expect("read")
        .is_none());
    assert_eq!(
        known.get(&second.runner_id),
        None,
        "nothing known from a rolled-back batch"
    );
}

#[tokio::test]
async fn batches_are_atomic_and_keep_every_state() {
    let (_dir, store) = open_temp().await;
    batches(&store).await;
}

/// Pruning, shared by SQLite and PostgreSQL: only deleted runners created before the cutoff
/// go, with their history, and never one myshoes may still release.
async fn retention(store: &Store) {
    let host = AgentId::generate();
    // Far in the past, so rows of other tests (created now) stay out of it.
    let long_ago = 1_000_000_000_000 + i64::from(rand_offset());
    let cutoff = long_ago + 1_000;
    let at = |created: i64, state: RunnerState, answered: bool, delete_requested: bool| {
        let mut r = runner(&host, created);
        r.state = state;
        r.answered = answered;
        r.delete_requested = delete_requested;
        r
    };
    let old_deleted = at(long_ago, RunnerState::Deleted, true, true);
    let old_never_answered = at(long_ago + 1, RunnerState::Deleted, false, false);
    let old_unreleased = at(long_ago + 2, RunnerState::Deleted, true, false);
    let old_live = at(long_ago + 3, RunnerState::Running, true, false);
    let recent_deleted = at(cutoff + 1, RunnerState::Deleted, true, true);
    let all = [
        &old_deleted,
        &old_never_answered,
        &old_unreleased,
        &old_live,
        &recent_deleted,
    ];
    // Rows an earlier run left below this cutoff (one PostgreSQL database serves every run).
    while store.prune_deleted(cutoff, 1000).await.expect("prune") > 0 {}
    for r in all {
        store.insert_runner(r).await.expect("insert");
    }
    // One per call: the limit holds.
    assert_eq!(store.prune_deleted(cutoff, 1).await.expect("prune"), 1);
    assert_eq!(store.prune_deleted(cutoff, 100).await.expect("prune"), 1);
    assert_eq!(store.prune_deleted(cutoff, 100).await.expect("prune"), 0);
    for gone in [&old_deleted, &old_never_answered] {
        assert!(store
            .get_runner(&gone.runner_id)
            .await
            .expect("read")
            .is_none());
        assert!(store
            .history(&gone.runner_id)
            .await
            .expect("history")
            .is_empty());
    }
    for kept in [&old_unreleased, &old_live, &recent_deleted] {
        assert!(store
            .get_runner(&kept.runner_id)
            .await
            .expect("read")
            .is_some());
        assert_eq!(
            store.history(&kept.runner_id).await.expect("history").len(),
            1
        );
    }
}

/// A per-run offset so reruns against one PostgreSQL database use fresh timestamps.
fn rand_offset() -> u32 {
    u32::from_le_bytes(
        RunnerId::generate().as_str().as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    ) % 1_000_000
}

#[tokio::test]
async fn pruning_removes_only_released_deleted_runners_past_the_cutoff() {
    let (_dir, store) = open_temp().await;
    retention(&store).await;
}
