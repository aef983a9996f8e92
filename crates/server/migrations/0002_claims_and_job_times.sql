-- shoes-vz state store, version 2: which runners an AddInstance was answered for (so a
-- restarted server knows which ones nobody claimed), why a runner ended on its own, when the
-- guest's job started and finished, and how long the request queued for a slot.
-- Rows from version 1 were all answered (or failed), so `answered` defaults to 1 for them;
-- new rows always set it.
ALTER TABLE runners ADD COLUMN answered BIGINT NOT NULL DEFAULT 1;
ALTER TABLE runners ADD COLUMN end_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE runners ADD COLUMN job_started_at_ms BIGINT;
ALTER TABLE runners ADD COLUMN job_finished_at_ms BIGINT;
ALTER TABLE runners ADD COLUMN queue_ms BIGINT;
