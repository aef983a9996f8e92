-- shoes-vz state store, version 3: per-agent credentials (only a hash is stored), revocation,
-- and cordoning (no new runners; kept across restarts).
-- Agents of version 2 have no credential yet: they enroll again with the shared token once.
ALTER TABLE agents ADD COLUMN credential_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN credential_confirmed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN revoked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN cordoned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN version TEXT NOT NULL DEFAULT '';
-- Paged listings walk the history in (created_at_ms, runner_id) order.
CREATE INDEX runners_by_created_at_and_id ON runners (created_at_ms, runner_id);
