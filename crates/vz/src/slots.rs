//! Saved State warm slots: exactly [`SLOT_COUNT`] (Apple's two macOS VMs per host), each with
//! its own machine identifier and MAC. A restore needs the configuration the state was saved
//! with, identity included, so every VM restored from slot *n* carries slot *n*'s identity:
//! two of them must never run at once. [`SlotPool`] hands slots out and takes them back.
//!
//! On disk a slot is a directory (see [`slot_dir`]) with the slot's `Disk.img`,
//! `AuxiliaryStorage`, `State.save` and [`WARM_SLOT_FILE`] (the agent adds the guest token; its
//! `hypervisor::vz::warm` has the full layout). Runners clone the disk and NVRAM
//! copy-on-write, restore `State.save`, then refresh their identity through the runner-agent.

use crate::errors::MAX_MACOS_VMS_PER_HOST;
use crate::hardware::VzMachineIdentifier;
use crate::mac_address::MacAddress;
use crate::plan::SavedStateKey;
use crate::version::MacosVersion;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

pub const SLOT_COUNT: usize = MAX_MACOS_VMS_PER_HOST as usize;
pub const WARM_SLOT_FILE: &str = "WarmSlot.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct SlotId(u8);

impl SlotId {
    pub fn new(index: u8) -> Result<SlotId, SlotError> {
        if usize::from(index) < SLOT_COUNT {
            Ok(SlotId(index))
        } else {
            Err(SlotError::NoSuchSlot { index })
        }
    }

    pub fn index(self) -> u8 {
        self.0
    }

    pub fn all() -> impl Iterator<Item = SlotId> {
        (0..SLOT_COUNT as u8).map(SlotId)
    }
}

impl TryFrom<u8> for SlotId {
    type Error = SlotError;
    fn try_from(index: u8) -> Result<Self, Self::Error> {
        SlotId::new(index)
    }
}

impl From<SlotId> for u8 {
    fn from(slot: SlotId) -> u8 {
        slot.0
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot-{}", self.0)
    }
}

/// `<warm_root>/slot-<n>`.
pub fn slot_dir(warm_root: &Path, slot: SlotId) -> PathBuf {
    warm_root.join(slot.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("slot {index} does not exist; there are exactly {SLOT_COUNT} warm slots (0 and 1)")]
    NoSuchSlot { index: u8 },
    #[error(
        "{given} warm slots given; at most {SLOT_COUNT} (Apple's limit of two macOS VMs per host)"
    )]
    TooMany { given: usize },
    #[error("{slot} is listed twice")]
    DuplicateSlot { slot: SlotId },
    #[error("{first} and {second} share {what}; every slot needs its own, or two VMs would run with the same one")]
    SharedIdentity {
        first: SlotId,
        second: SlotId,
        what: &'static str,
    },
    #[error("every warm slot is in use; boot cold or wait for a runner to end")]
    AllBusy,
    #[error("runner {runner} already holds {slot}")]
    AlreadyHolding { runner: String, slot: SlotId },
    #[error("{slot} is not held by runner {runner}")]
    NotHeld { slot: SlotId, runner: String },
    #[error("MAC {mac} belongs to {slot}; a cold-booted runner must not use it")]
    MacTaken { mac: MacAddress, slot: SlotId },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} says it is {found}, but it lives in the directory of {expected}")]
    WrongDirectory {
        path: PathBuf,
        found: SlotId,
        expected: SlotId,
    },
}

/// `WarmSlot.json`: what a slot's Saved State was taken with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmSlot {
    pub slot: SlotId,
    pub template: String,
    pub template_version: String,
    /// The macOS version of the host that saved the state (restores need a compatible host).
    pub saved_on_host: String,
    /// Configuration and identity the state needs back: sizes, devices, machine identifier, MAC.
    pub key: SavedStateKey,
}

/// Why a slot's state cannot be restored on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostMismatch {
    #[error("it was saved on macOS {saved}, this host runs {host}: Saved States can stop working after a host update; warm it again (shoes-vz template warm-vz)")]
    OtherVersion {
        saved: MacosVersion,
        host: MacosVersion,
    },
    #[error("its savedOnHost {text:?} is not a macOS version; warm it again")]
    Unreadable { text: String },
}

impl WarmSlot {
    /// Whether the state was saved on this host's exact macOS version (major.minor.patch):
    /// Saved States can stop working after a host update (VirtualBuddy 2.2 release notes), so
    /// a slot from another version is skipped and its runners boot cold until it is rewarmed.
    pub fn check_host(&self, host: MacosVersion) -> Result<(), HostMismatch> {
        let saved: MacosVersion =
            self.saved_on_host
                .parse()
                .map_err(|_| HostMismatch::Unreadable {
                    text: self.saved_on_host.chars().take(40).collect(),
                })?;
        if saved == host {
            Ok(())
        } else {
            Err(HostMismatch::OtherVersion { saved, host })
        }
    }

    pub fn identity(&self) -> SlotIdentity {
        SlotIdentity {
            slot: self.slot,
            mac: self.key.mac_address,
            machine_identifier: self.key.machine_identifier.clone(),
        }
    }
}

pub fn write_warm_slot(dir: &Path, slot: &WarmSlot) -> Result<PathBuf, SlotError> {
    let path = dir.join(WARM_SLOT_FILE);
    crate::fsutil::write_json_atomic(&path, slot).map_err(|source| SlotError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Reads `<slot_dir>/WarmSlot.json` and checks it names the slot whose directory it is in.
pub fn read_warm_slot(warm_root: &Path, slot: SlotId) -> Result<WarmSlot, SlotError> {
    let path = slot_dir(warm_root, slot).join(WARM_SLOT_FILE);
    let bytes = std::fs::read(&path).map_err(|source| SlotError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    let warm: WarmSlot = serde_json::from_slice(&bytes).map_err(|source| SlotError::Json {
        path: path.clone(),
        source,
    })?;
    if warm.slot != slot {
        return Err(SlotError::WrongDirectory {
            path,
            found: warm.slot,
            expected: slot,
        });
    }
    Ok(warm)
}

/// The identity a slot's VMs run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotIdentity {
    pub slot: SlotId,
    pub mac: MacAddress,
    pub machine_identifier: VzMachineIdentifier,
}

#[derive(Debug)]
struct Entry {
    identity: SlotIdentity,
    holder: Option<String>,
}

/// Which runner holds which slot. Not thread-safe by itself: the agent keeps it behind its
/// own lock, together with its capacity count.
#[derive(Debug)]
pub struct SlotPool {
    entries: Vec<Entry>,
}

impl SlotPool {
    /// A pool over the slots that have a usable warm state (zero, one or two). Slots never
    /// share a MAC; they share a machine identifier only when `shared_identifier_ok` (the
    /// template's `machineIdentity = "template"`, [`crate::identity`]).
    pub fn new(
        identities: Vec<SlotIdentity>,
        shared_identifier_ok: bool,
    ) -> Result<SlotPool, SlotError> {
        if identities.len() > SLOT_COUNT {
            return Err(SlotError::TooMany {
                given: identities.len(),
            });
        }
        for (i, a) in identities.iter().enumerate() {
            for b in &identities[..i] {
                if a.slot == b.slot {
                    return Err(SlotError::DuplicateSlot { slot: a.slot });
                }
                let shared = if a.mac == b.mac {
                    Some("a MAC address")
                } else if a.machine_identifier == b.machine_identifier && !shared_identifier_ok {
                    Some("a machine identifier")
                } else {
                    None
                };
                if let Some(what) = shared {
                    return Err(SlotError::SharedIdentity {
                        first: b.slot,
                        second: a.slot,
                        what,
                    });
                }
            }
        }
        let mut entries: Vec<Entry> = identities
            .into_iter()
            .map(|identity| Entry {
                identity,
                holder: None,
            })
            .collect();
        entries.sort_by_key(|e| e.identity.slot);
        Ok(SlotPool { entries })
    }

    /// Gives `runner` the lowest free slot.
    pub fn allocate(&mut self, runner: &str) -> Result<SlotIdentity, SlotError> {
        if let Some(held) = self
            .entries
            .iter()
            .find(|e| e.holder.as_deref() == Some(runner))
        {
            return Err(SlotError::AlreadyHolding {
                runner: runner.to_string(),
                slot: held.identity.slot,
            });
        }
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.holder.is_none())
            .ok_or(SlotError::AllBusy)?;
        entry.holder = Some(runner.to_string());
        Ok(entry.identity.clone())
    }

    /// Takes `slot` back from `runner` once its VM has stopped.
    pub fn release(&mut self, slot: SlotId, runner: &str) -> Result<(), SlotError> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.identity.slot == slot && e.holder.as_deref() == Some(runner))
            .ok_or_else(|| SlotError::NotHeld {
                slot,
                runner: runner.to_string(),
            })?;
        entry.holder = None;
        Ok(())
    }

    /// Releases whatever `runner` holds (for cleanup paths that do not know the slot).
    pub fn release_runner(&mut self, runner: &str) -> Option<SlotId> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| e.holder.as_deref() == Some(runner))?;
        entry.holder = None;
        Some(entry.identity.slot)
    }

    pub fn holder(&self, slot: SlotId) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.identity.slot == slot)
            .and_then(|e| e.holder.as_deref())
    }

    pub fn free(&self) -> usize {
        self.entries.iter().filter(|e| e.holder.is_none()).count()
    }

    /// Refuses a cold runner's MAC if a slot owns it (whether or not the slot is in use now:
    /// a restore may start any moment).
    pub fn check_cold_mac(&self, mac: MacAddress) -> Result<(), SlotError> {
        match self.entries.iter().find(|e| e.identity.mac == mac) {
            Some(entry) => Err(SlotError::MacTaken {
                mac,
                slot: entry.identity.slot,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(index: u8, ecid: u64) -> SlotIdentity {
        SlotIdentity {
            slot: SlotId::new(index).expect("slot"),
            mac: MacAddress::derive(ecid),
            machine_identifier: VzMachineIdentifier::from_bytes(ecid.to_be_bytes().to_vec())
                .expect("id"),
        }
    }

    #[test]
    fn exactly_two_slots_exist() {
        assert_eq!(SLOT_COUNT, 2);
        assert!(SlotId::new(0).is_ok() && SlotId::new(1).is_ok());
        assert!(matches!(
            SlotId::new(2),
            Err(SlotError::NoSuchSlot { index: 2 })
        ));
        assert_eq!(SlotId::all().count(), 2);
        assert!(matches!(
            SlotPool::new(vec![identity(0, 1), identity(1, 2), identity(1, 3)], false),
            Err(SlotError::TooMany { given: 3 })
        ));
        assert!(serde_json::from_str::<SlotId>("2").is_err());
        assert_eq!(
            serde_json::from_str::<SlotId>("1").expect("slot").index(),
            1
        );
    }

    #[test]
    fn slots_never_share_identity() {
        assert!(matches!(
            SlotPool::new(vec![identity(0, 1), identity(0, 2)], false),
            Err(SlotError::DuplicateSlot { .. })
        ));
        let same_mac = SlotIdentity {
            machine_identifier: VzMachineIdentifier::from_bytes(b"other".to_vec()).expect("id"),
            ..identity(1, 1)
        };
        let error =
            SlotPool::new(vec![identity(0, 1), same_mac.clone()], true).expect_err("shared MAC");
        assert!(error.to_string().contains("MAC"), "{error}");
        let same_id = SlotIdentity {
            mac: MacAddress::derive(99),
            ..identity(1, 1)
        };
        let error =
            SlotPool::new(vec![identity(0, 1), same_id.clone()], false).expect_err("shared id");
        assert!(error.to_string().contains("machine identifier"), "{error}");
        // With the template's identifier for every VM, slots share it (never the MAC).
        SlotPool::new(vec![identity(0, 1), same_id], true).expect("template identity");
    }

    #[test]
    fn allocation_never_gives_one_slot_to_two_runners() {
        let mut pool = SlotPool::new(vec![identity(1, 2), identity(0, 1)], false).expect("pool");
        let a = pool.allocate("runner-a").expect("first");
        assert_eq!(a.slot.index(), 0, "lowest free slot first");
        assert!(matches!(
            pool.allocate("runner-a"),
            Err(SlotError::AlreadyHolding { .. })
        ));
        let b = pool.allocate("runner-b").expect("second");
        assert_eq!(b.slot.index(), 1);
        assert_ne!(a.mac, b.mac);
        assert!(matches!(pool.allocate("runner-c"), Err(SlotError::AllBusy)));
        assert_eq!(pool.free(), 0);

        assert!(matches!(
            pool.release(a.slot, "runner-b"),
            Err(SlotError::NotHeld { .. })
        ));
        pool.release(a.slot, "runner-a").expect("release");
        assert!(pool.release(a.slot, "runner-a").is_err(), "double release");
        assert_eq!(pool.holder(a.slot), None);
        let c = pool.allocate("runner-c").expect("slot 0 again");
        assert_eq!(c.slot, a.slot);
        assert_eq!(pool.release_runner("runner-b"), Some(b.slot));
        assert_eq!(pool.release_runner("runner-b"), None);
        assert_eq!(pool.holder(c.slot), Some("runner-c"));
    }

    #[test]
    fn a_pool_with_fewer_slots_and_cold_mac_checks() {
        let mut pool = SlotPool::new(vec![identity(1, 5)], false).expect("one slot");
        assert_eq!(pool.allocate("a").expect("slot").slot.index(), 1);
        assert!(matches!(pool.allocate("b"), Err(SlotError::AllBusy)));
        assert!(matches!(
            pool.check_cold_mac(MacAddress::derive(5)),
            Err(SlotError::MacTaken { .. })
        ));
        pool.check_cold_mac(MacAddress::derive(6))
            .expect("free MAC");
        let mut empty = SlotPool::new(Vec::new(), false).expect("no warm state");
        assert!(matches!(empty.allocate("a"), Err(SlotError::AllBusy)));
    }

    #[test]
    fn a_slot_saved_on_another_host_version_is_refused() {
        let limits = crate::limits::tests::apple_silicon_like(8, 16);
        let plan = crate::plan::build(crate::plan::tests::request(Path::new("/s")), &limits)
            .expect("plan");
        let warm = |saved: &str| WarmSlot {
            slot: SlotId::new(0).expect("slot"),
            template: "macos-26".into(),
            template_version: "1".into(),
            saved_on_host: saved.into(),
            key: plan.saved_state_key(),
        };
        let host = MacosVersion::new(26, 1, 0);
        warm("26.1").check_host(host).expect("26.1 is 26.1.0");
        for (saved, needle) in [
            ("26.0.1", "saved on macOS 26.0.1"),
            ("26.1.1", "26.1.1"),
            ("15.6", "15.6.0"),
        ] {
            let error = warm(saved).check_host(host).expect_err(saved);
            assert!(matches!(error, HostMismatch::OtherVersion { .. }));
            assert!(error.to_string().contains(needle), "{error}");
            assert!(error.to_string().contains("warm-vz"), "{error}");
        }
        assert!(matches!(
            warm("tahoe").check_host(host),
            Err(HostMismatch::Unreadable { .. })
        ));
    }

    #[test]
    fn warm_slot_file_round_trips_and_must_sit_in_its_own_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let limits = crate::limits::tests::apple_silicon_like(8, 16);
        let plan = crate::plan::build(crate::plan::tests::request(Path::new("/s")), &limits)
            .expect("plan");
        let warm = WarmSlot {
            slot: SlotId::new(1).expect("slot"),
            template: "macos-26".into(),
            template_version: "1".into(),
            saved_on_host: "26.0.1".into(),
            key: plan.saved_state_key(),
        };
        let dir = slot_dir(root.path(), warm.slot);
        assert!(dir.ends_with("slot-1"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_warm_slot(&dir, &warm).expect("write");
        let back = read_warm_slot(root.path(), warm.slot).expect("read");
        assert_eq!(back, warm);
        back.check_host(MacosVersion::new(26, 0, 1))
            .expect("saved on this very version");
        assert_eq!(back.identity().mac, plan.mac());

        let other = slot_dir(root.path(), SlotId::new(0).expect("slot"));
        std::fs::create_dir_all(&other).expect("mkdir");
        std::fs::copy(dir.join(WARM_SLOT_FILE), other.join(WARM_SLOT_FILE)).expect("copy");
        assert!(matches!(
            read_warm_slot(root.path(), SlotId::new(0).expect("slot")),
            Err(SlotError::WrongDirectory { .. })
        ));
    }
}
