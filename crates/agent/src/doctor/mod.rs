//! `shoes-vz doctor` and `shoes-vz-agent --check`: every prerequisite of the configured
//! backend, each a line `ok` or `FAIL: what is wrong — what to do` (or a `WARN`), and a
//! non-zero exit status on any FAIL.
//!
//! Every decision is plain Rust over facts ([`decide`]); the facts come from thin probes
//! behind the [`Probes`] trait ([`probes::SystemProbes`] on the real machine, fakes in tests).
//!
//! # Layout
//! - `mod.rs`: [`Check`], [`Report`], [`run`].
//! - [`decide`]: facts → checks, per backend.
//! - [`probes`]: the [`Probes`] trait and the real probes (commands, files, the framework).

pub mod decide;
pub mod probes;

pub use probes::{Keychain, Probes, SystemProbes};

use crate::config::{AgentConfig, BackendKind};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not as it should (slow, or fails later under load).
    Warn,
    Fail,
}

/// One prerequisite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found (for `ok`) or what is wrong.
    pub detail: String,
    /// What to do, for `WARN` and `FAIL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// All checks of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub backend: &'static str,
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(backend: BackendKind, checks: Vec<Check>) -> Report {
        Report {
            backend: backend.as_str(),
            ok: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }

    /// 0 when nothing failed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.ok)
    }

    /// One line per check: `name: ok (detail)`, `name: WARN: detail — fix`,
    /// `name: FAIL: detail — fix`, then a summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let _ = match (check.status, &check.fix) {
                (Status::Ok, _) => writeln!(out, "{}: ok ({})", check.name, check.detail),
                (Status::Warn, fix) => writeln!(
                    out,
                    "{}: WARN: {} — {}",
                    check.name,
                    check.detail,
                    fix.as_deref().unwrap_or("")
                ),
                (Status::Fail, fix) => writeln!(
                    out,
                    "{}: FAIL: {} — {}",
                    check.name,
                    check.detail,
                    fix.as_deref().unwrap_or("")
                ),
            };
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let _ = writeln!(
            out,
            "{} backend: {} checks, {} failed",
            self.backend,
            self.checks.len(),
            failed
        );
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Checks what `config`'s backend needs on this machine.
pub async fn run(config: &AgentConfig, probes: &dyn Probes) -> Report {
    let checks = match config.backend {
        BackendKind::Test => decide::test_backend(config, probes),
        BackendKind::Qemu => decide::qemu(config, probes),
        BackendKind::Vz => decide::vz(config, probes).await,
    };
    Report::new(config.backend, checks)
}

#[cfg(test)]
mod tests;
