//! Which `VZMacMachineIdentifier` a runner's VM gets: the template's policy
//! `machineIdentity = "per-runner" | "template"` (in the template's `VzOptions.json`).
//!
//! - `per-runner` (the default, as the design asks): a fresh identifier from the framework for
//!   every runner, so no two guests ever look like the same Mac.
//! - `template`: every runner (and warm slot) runs with the template's own identifier, as tart
//!   clones do (tart Sources/tart/VMDirectory.swift `clone` keeps `ecid`; a fresh one is
//!   opt-in, `tart set --random-serial`, Set.swift). Use it for images whose guests misbehave
//!   with a new identifier: macOS 26.4+ guests boot into the post-upgrade Setup Assistant
//!   (MiniBuddy) on a fresh identifier (tart#1222), Monterey guests failed to boot (tart#977).
//!   Clones sharing an identifier run side by side in tart/orchard fleets; their MACs still
//!   differ (derived per runner; bootpd keys leases by MAC).

use crate::hardware::VzMachineIdentifier;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineIdentityPolicy {
    #[default]
    PerRunner,
    Template,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the template says machineIdentity = \"template\" but has no machineIdentifier; re-import it (`shoes-vz template import-tart --machine-identity template`) or use \"per-runner\"")]
    NoTemplateIdentifier,
    #[error("cannot make a fresh machine identifier")]
    Fresh(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The identifier a new VM runs with under `policy`. `fresh` asks the framework for a new one
/// (called only for `per-runner`).
pub fn choose<E>(
    policy: MachineIdentityPolicy,
    template_identifier: Option<&VzMachineIdentifier>,
    fresh: impl FnOnce() -> Result<VzMachineIdentifier, E>,
) -> Result<VzMachineIdentifier, IdentityError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match policy {
        MachineIdentityPolicy::PerRunner => fresh().map_err(|e| IdentityError::Fresh(Box::new(e))),
        MachineIdentityPolicy::Template => template_identifier
            .cloned()
            .ok_or(IdentityError::NoTemplateIdentifier),
    }
}

/// Whether two warm slots may share a machine identifier: only when every VM of the template
/// runs with the template's (their MACs must differ all the same).
pub fn slots_may_share_identifier(policy: MachineIdentityPolicy) -> bool {
    policy == MachineIdentityPolicy::Template
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(bytes: &[u8]) -> VzMachineIdentifier {
        VzMachineIdentifier::from_bytes(bytes.to_vec()).expect("id")
    }

    #[test]
    fn per_runner_is_the_default_and_asks_the_framework_each_time() {
        assert_eq!(
            MachineIdentityPolicy::default(),
            MachineIdentityPolicy::PerRunner
        );
        let template = id(b"template");
        let chosen = choose(MachineIdentityPolicy::PerRunner, Some(&template), || {
            Ok::<_, std::io::Error>(id(b"fresh"))
        })
        .expect("fresh");
        assert_eq!(chosen, id(b"fresh"));
        let error = choose(MachineIdentityPolicy::PerRunner, None, || {
            Err::<VzMachineIdentifier, _>(std::io::Error::other("framework said no"))
        })
        .expect_err("framework failure");
        assert!(matches!(error, IdentityError::Fresh(_)));
    }

    #[test]
    fn template_policy_reuses_the_templates_identifier_and_never_asks() {
        let template = id(b"template");
        let chosen = choose(MachineIdentityPolicy::Template, Some(&template), || {
            Err::<VzMachineIdentifier, _>(std::io::Error::other("must not be called"))
        })
        .expect("template's");
        assert_eq!(chosen, template);
        let error = choose(MachineIdentityPolicy::Template, None, || {
            Ok::<_, std::io::Error>(id(b"fresh"))
        })
        .expect_err("no identifier in the template");
        assert!(
            error.to_string().contains("machine-identity template"),
            "{error}"
        );
        assert!(slots_may_share_identifier(MachineIdentityPolicy::Template));
        assert!(!slots_may_share_identifier(
            MachineIdentityPolicy::PerRunner
        ));
    }

    #[test]
    fn the_policy_reads_as_the_issue_spells_it() {
        let parsed: MachineIdentityPolicy = serde_json::from_str("\"per-runner\"").expect("json");
        assert_eq!(parsed, MachineIdentityPolicy::PerRunner);
        let parsed: MachineIdentityPolicy = serde_json::from_str("\"template\"").expect("json");
        assert_eq!(parsed, MachineIdentityPolicy::Template);
        assert!(serde_json::from_str::<MachineIdentityPolicy>("\"random\"").is_err());
    }
}
