-- shoes-vz state store, version 4: fewer indexes to maintain on every runner write.
-- No query filters runners by state alone (live runners are served from memory), and
-- (created_at_ms, runner_id) from version 3 serves everything created_at_ms did: paging and
-- pruning deleted runners past history.retention.
DROP INDEX runners_by_state;
DROP INDEX runners_by_created_at;
