-- shoes-vz state store, version 1.
-- Portable between SQLite and PostgreSQL: BIGINT for integers, timestamps (unix ms) and
-- booleans (0/1); TEXT for ids, enum names and JSON. No AUTOINCREMENT/SERIAL: history rows
-- are keyed by (runner_id, seq) with seq computed inside the writing transaction.

CREATE TABLE agents (
    agent_id         TEXT PRIMARY KEY,
    hostname         TEXT NOT NULL,
    backend          TEXT NOT NULL,
    max_runners      BIGINT NOT NULL,
    cpu_cores        BIGINT NOT NULL,
    memory_mib       BIGINT NOT NULL,
    templates_json   TEXT NOT NULL,
    online           BIGINT NOT NULL,
    last_seen_ms     BIGINT NOT NULL,
    registered_at_ms BIGINT NOT NULL
);

-- No foreign key to agents: a runner's record and history outlive its agent.
CREATE TABLE runners (
    runner_id          TEXT PRIMARY KEY,
    cloud_id           TEXT NOT NULL UNIQUE,
    runner_name        TEXT NOT NULL,
    agent_id           TEXT NOT NULL,
    template           TEXT NOT NULL,
    resource_type      TEXT NOT NULL,
    vcpus              BIGINT NOT NULL,
    memory_mib         BIGINT NOT NULL,
    labels_json        TEXT NOT NULL,
    state              TEXT NOT NULL,
    delete_requested   BIGINT NOT NULL,
    ip_address         TEXT NOT NULL,
    guest_runner_state TEXT NOT NULL,
    error              TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    clone_ms           BIGINT,
    boot_to_ip_ms      BIGINT,
    boot_to_ssh_ms     BIGINT,
    setup_ms           BIGINT,
    startup_ms         BIGINT
);

CREATE INDEX runners_by_created_at ON runners (created_at_ms);
CREATE INDEX runners_by_state ON runners (state);

CREATE TABLE runner_history (
    runner_id TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    state     TEXT NOT NULL,
    at_ms     BIGINT NOT NULL,
    detail    TEXT NOT NULL,
    PRIMARY KEY (runner_id, seq)
);
