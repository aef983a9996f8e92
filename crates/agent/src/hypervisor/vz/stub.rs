//! [`VzBackend`] where Virtualization.framework does not exist: it cannot be made, so an agent
//! configured with `backend = "vz"` stops at start with [`super::unsupported_here`].

use super::unsupported_here;
use super::warm::{WarmRequest, WarmedSlot};
use crate::config::VzConfig;
use crate::hypervisor::{GuestEndpoint, Hypervisor, HypervisorError, VmEvent, VmSpec};
use shoes_vz_model::RunnerId;
use std::path::Path;
use std::time::Duration;
use tokio::sync::broadcast;

/// Uninhabited: no value exists off macOS, so none of its methods can run.
pub enum VzBackend {}

impl VzBackend {
    pub fn new(_config: VzConfig, _templates_dir: &Path) -> Result<VzBackend, HypervisorError> {
        Err(unsupported_here())
    }
}

/// Warm slots need Virtualization.framework: off macOS a typed Unsupported.
pub async fn warm_template(_request: &WarmRequest) -> Result<Vec<WarmedSlot>, HypervisorError> {
    Err(unsupported_here())
}

#[async_trait::async_trait]
impl Hypervisor for VzBackend {
    fn kind(&self) -> &'static str {
        match *self {}
    }

    async fn start(&self, _spec: &VmSpec) -> Result<(), HypervisorError> {
        match *self {}
    }

    async fn guest_endpoint(
        &self,
        _runner_id: &RunnerId,
        _timeout: Duration,
    ) -> Result<GuestEndpoint, HypervisorError> {
        match *self {}
    }

    async fn stop(&self, _runner_id: &RunnerId, _timeout: Duration) -> Result<(), HypervisorError> {
        match *self {}
    }

    async fn clean_leftover(&self, _bundle_dir: &Path) -> Result<(), HypervisorError> {
        match *self {}
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        match *self {}
    }
}
