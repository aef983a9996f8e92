//! Saved State (warm start) primitives. Save: `stop`, `migrate` to `exec:cat > STATE`, poll
//! `query-migrate`; the caller then quits QEMU. Restore: start QEMU with the same devices and
//! memory plus `-incoming` (see [`super::cmdline::MachineSpec::incoming`]), wait until it
//! has left `inmigrate`, then `cont`. A guest whose RAM is a file
//! ([`super::cmdline::GuestMemory`]) is saved and restored with `x-ignore-shared`: the state
//! holds only the devices, so a restore loads next to nothing.

use super::cmdline::{outgoing_uri, CmdlineError};
use super::qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Path(#[from] CmdlineError),
    #[error("saving the VM state failed: {0}")]
    MigrationFailed(String),
    #[error("the VM state was not {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
}

/// Short: a restore is on a warm runner's start path, and `query-status` is cheap.
const POLL: Duration = Duration::from_millis(5);

/// Pauses the VM and writes its state (RAM and devices) to `state_file`. The VM stays
/// paused; quit it afterwards (its disks must not change after the save).
pub async fn save(qmp: &mut Qmp, state_file: &Path, timeout: Duration) -> Result<(), StateError> {
    let uri = outgoing_uri(state_file)?;
    qmp.execute("stop", None).await?;
    qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
    let started = Instant::now();
    loop {
        let info = qmp.execute("query-migrate", None).await?;
        match migration_status(&info) {
            MigrationStatus::Completed => return Ok(()),
            MigrationStatus::Failed(reason) => return Err(StateError::MigrationFailed(reason)),
            MigrationStatus::InProgress => {}
        }
        if started.elapsed() >= timeout {
            let _ = qmp.execute("migrate_cancel", None).await;
            return Err(StateError::Timeout {
                what: "saved",
                after: timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Makes migrations skip RAM that lives in a shared file ([`super::cmdline::GuestMemory`]):
/// a save then writes only the devices, and a restore expects exactly that.
pub async fn ignore_shared_memory(qmp: &mut Qmp) -> Result<(), StateError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })),
    )
    .await?;
    Ok(())
}

/// Starts loading `state_file` into a QEMU started with `-incoming defer` whose RAM is a
/// warm template's file; then wait with [`resume_incoming`].
pub async fn incoming_from_file(qmp: &mut Qmp, state_file: &Path) -> Result<(), StateError> {
    ignore_shared_memory(qmp).await?;
    let uri = super::cmdline::incoming_uri(state_file)?;
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await?;
    Ok(())
}

/// Waits for an `-incoming` QEMU to finish loading the state, then resumes the VM.
pub async fn resume_incoming(qmp: &mut Qmp, timeout: Duration) -> Result<(), StateError> {
    let started = Instant::now();
    loop {
        let status = qmp.status().await?;
        match status.as_str() {
            "inmigrate" => {}
            "running" => return Ok(()),
            _ => {
                qmp.execute("cont", None).await?;
                return Ok(());
            }
        }
        if started.elapsed() >= timeout {
            return Err(StateError::Timeout {
                what: "restored",
                after: timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum MigrationStatus {
    InProgress,
    Completed,
    Failed(String),
}

/// Reads `query-migrate`'s reply.
pub fn migration_status(info: &Value) -> MigrationStatus {
    match info.get("status").and_then(Value::as_str) {
        Some("completed") => MigrationStatus::Completed,
        Some(status @ ("failed" | "cancelled")) => MigrationStatus::Failed(
            info.get("error-desc")
                .and_then(Value::as_str)
                .unwrap_or(status)
                .to_string(),
        ),
        _ => MigrationStatus::InProgress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_migration_progress() {
        assert_eq!(
            migration_status(&json!({"status": "active", "ram": {}})),
            MigrationStatus::InProgress
        );
        assert_eq!(migration_status(&json!({})), MigrationStatus::InProgress);
        assert_eq!(
            migration_status(&json!({"status": "completed"})),
            MigrationStatus::Completed
        );
        assert_eq!(
            migration_status(&json!({"status": "failed", "error-desc": "disk full"})),
            MigrationStatus::Failed("disk full".into())
        );
    }
}
