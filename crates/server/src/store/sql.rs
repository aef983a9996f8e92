//! Every statement the store runs. `$n` placeholders work on SQLite and PostgreSQL alike.

pub const UPSERT_AGENT: &str = "INSERT INTO agents (agent_id, hostname, backend, max_runners, \
     cpu_cores, memory_mib, templates_json, online, last_seen_ms, registered_at_ms, \
     credential_hash, credential_confirmed, revoked, cordoned, version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname, \
     backend = excluded.backend, max_runners = excluded.max_runners, \
     cpu_cores = excluded.cpu_cores, memory_mib = excluded.memory_mib, \
     templates_json = excluded.templates_json, online = excluded.online, \
     last_seen_ms = excluded.last_seen_ms, registered_at_ms = excluded.registered_at_ms, \
     credential_hash = excluded.credential_hash, \
     credential_confirmed = excluded.credential_confirmed, revoked = excluded.revoked, \
     cordoned = excluded.cordoned, version = excluded.version";

pub const SET_AGENT_ONLINE: &str =
    "UPDATE agents SET online = $2, last_seen_ms = $3 WHERE agent_id = $1";

pub const LIST_AGENTS: &str = "SELECT agent_id, hostname, backend, max_runners, cpu_cores, \
     memory_mib, templates_json, online, last_seen_ms, registered_at_ms, credential_hash, \
     credential_confirmed, revoked, cordoned, version FROM agents \
     ORDER BY registered_at_ms, agent_id";

/// Columns of a runner row: the identity (runner_id, cloud_id, created_at_ms), then the
/// mutable ones in the order `UPDATE_RUNNER` binds them as $2..$27.
macro_rules! runner_columns {
    () => {
        "runner_id, cloud_id, created_at_ms, runner_name, agent_id, template, resource_type, \
         vcpus, memory_mib, labels_json, state, delete_requested, ip_address, \
         guest_runner_state, error, updated_at_ms, clone_ms, boot_to_ip_ms, boot_to_ssh_ms, \
         setup_ms, startup_ms, answered, end_reason, job_started_at_ms, job_finished_at_ms, \
         queue_ms, prepare_ms, vm_start_ms, refresh_ms"
    };
}

/// Columns of a runner row.
pub const RUNNER_COLUMNS: usize = 29;

/// `rows` runners in one statement.
pub fn insert_runners(rows: usize) -> String {
    format!(
        "INSERT INTO runners ({}) VALUES {}",
        runner_columns!(),
        values(rows, RUNNER_COLUMNS)
    )
}

pub const HISTORY_COLUMNS: usize = 5;

/// `rows` history rows in one statement, each with its number.
pub fn append_history(rows: usize) -> String {
    format!(
        "INSERT INTO runner_history (runner_id, seq, state, at_ms, detail) VALUES {}",
        values(rows, HISTORY_COLUMNS)
    )
}

/// `($1, …, $c), ($c+1, …), …` for `rows` rows of `columns` values.
fn values(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Overwrites the mutable columns; `runner_id` ($1) is the key, `cloud_id` and
/// `created_at_ms` never change.
pub const UPDATE_RUNNER: &str = "UPDATE runners SET runner_name = $2, agent_id = $3, \
     template = $4, resource_type = $5, vcpus = $6, memory_mib = $7, labels_json = $8, \
     state = $9, delete_requested = $10, ip_address = $11, guest_runner_state = $12, \
     error = $13, updated_at_ms = $14, clone_ms = $15, boot_to_ip_ms = $16, \
     boot_to_ssh_ms = $17, setup_ms = $18, startup_ms = $19, answered = $20, \
     end_reason = $21, job_started_at_ms = $22, job_finished_at_ms = $23, queue_ms = $24, \
     prepare_ms = $25, vm_start_ms = $26, refresh_ms = $27 WHERE runner_id = $1";

pub const GET_RUNNER: &str = concat!(
    "SELECT ",
    runner_columns!(),
    " FROM runners WHERE runner_id = $1"
);

pub const LIST_RUNNERS: &str = concat!(
    "SELECT ",
    runner_columns!(),
    " FROM runners ORDER BY created_at_ms, runner_id"
);

pub const LIST_LIVE_RUNNERS: &str = concat!(
    "SELECT ",
    runner_columns!(),
    " FROM runners WHERE state <> $1 ORDER BY created_at_ms, runner_id"
);

/// One page of every runner, in (created_at_ms, runner_id) order after the key ($1, $2).
pub const LIST_RUNNERS_PAGE: &str = concat!(
    "SELECT ",
    runner_columns!(),
    " FROM runners WHERE created_at_ms > $1 OR (created_at_ms = $1 AND runner_id > $2) \
     ORDER BY created_at_ms, runner_id LIMIT $3"
);

/// What a starting server keeps in memory: live runners, and runners that ended on their
/// own after myshoes got their cloud_id and that myshoes has not deleted yet (its
/// DeleteInstance still answers OK).
pub const LIST_UNRELEASED_RUNNERS: &str = concat!(
    "SELECT ",
    runner_columns!(),
    " FROM runners WHERE state <> $1 OR (answered = 1 AND delete_requested = 0) \
     ORDER BY created_at_ms, runner_id"
);

/// The stored state, read inside a write transaction. SQLite already holds the database
/// write lock (BEGIN IMMEDIATE); PostgreSQL needs the row lock so two updates of one runner
/// cannot both see the old state.
pub const RUNNER_STATE_SQLITE: &str = "SELECT state FROM runners WHERE runner_id = $1";
pub const RUNNER_STATE_POSTGRES: &str = "SELECT state FROM runners WHERE runner_id = $1 FOR UPDATE";

/// The history's last number, read once the row lock is held: a statement of its own, so on
/// PostgreSQL it sees what the lock's previous holder committed.
pub const LAST_HISTORY_SEQ: &str =
    "SELECT COALESCE(MAX(seq), 0) FROM runner_history WHERE runner_id = $1";

pub const HISTORY: &str = "SELECT seq, state, at_ms, detail FROM runner_history \
     WHERE runner_id = $1 ORDER BY seq";

/// Deleted runners created before $1, that nobody may still ask about (not ended on their own
/// while myshoes holds them), oldest first, at most $3; $2 is the deleted state.
macro_rules! prunable {
    () => {
        "SELECT runner_id FROM runners WHERE created_at_ms < $1 AND state = $2 \
         AND NOT (answered = 1 AND delete_requested = 0) ORDER BY created_at_ms LIMIT $3"
    };
}

pub const PRUNE_HISTORY: &str = concat!(
    "DELETE FROM runner_history WHERE runner_id IN (",
    prunable!(),
    ")"
);

pub const PRUNE_RUNNERS: &str =
    concat!("DELETE FROM runners WHERE runner_id IN (", prunable!(), ")");
