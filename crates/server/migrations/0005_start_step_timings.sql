-- shoes-vz state store, version 5: where a start goes, as agents measure it: host work before
-- the VM starts, the hypervisor starting (or restoring) it, and a restored guest taking the
-- runner's identity. NULL: not measured (older agents, or not this kind of start).
ALTER TABLE runners ADD COLUMN prepare_ms BIGINT;
ALTER TABLE runners ADD COLUMN vm_start_ms BIGINT;
ALTER TABLE runners ADD COLUMN refresh_ms BIGINT;
