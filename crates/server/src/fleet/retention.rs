//! Runner history retention: deleted runners older than `history.retention` leave the store,
//! a bounded chunk at a time, so no listing or table grows with the fleet's age.

use super::Fleet;
use crate::store::now_ms;
use crate::writer::WriteError;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runners removed per transaction: short enough not to hold up the writer.
const PRUNE_CHUNK: u32 = 1000;

impl Fleet {
    /// Prunes every deleted runner created before `history.retention` ago; how many went.
    pub async fn prune_history(&self) -> Result<u64, WriteError> {
        let retention =
            i64::try_from(self.config.history.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(retention);
        let mut total = 0;
        loop {
            let pruned = self.writer.prune(cutoff, PRUNE_CHUNK).await?;
            total += pruned;
            if pruned < u64::from(PRUNE_CHUNK) {
                return Ok(total);
            }
        }
    }
}

/// Prunes at start and every `history.prune_interval` until `stop`.
pub async fn prune_periodically(fleet: Arc<Fleet>, stop: CancellationToken) {
    let mut every = tokio::time::interval(fleet.config.history.prune_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match fleet.prune_history().await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                pruned,
                retention = ?fleet.config.history.retention,
                "pruned deleted runners past history.retention"
            ),
            Err(error) => {
                tracing::warn!(error = %error, "cannot prune the runner history; retrying at the next interval")
            }
        }
    }
}
