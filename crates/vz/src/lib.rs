//! shoes-vz's Virtualization.framework backend: macOS guests on Apple silicon.
//!
//! Everything that can be decided without the framework is plain Rust, compiled and unit-tested
//! on every platform: the VM plan, limits, version gates, warm slots, identity files, tart
//! import, launchd. The `ffi` module turns a [`plan::VmPlan`] into VZ objects and drives the
//! VM on its own dispatch queue; it is built on macOS and, off Apple, only type-checked
//! (feature `typecheck`, `.ci/vz-typecheck.sh`): it cannot link or run there.
//!
//! # Layout
//! - [`plan`]: [`plan::VmPlan`] from a request, clamped by [`limits`]; Saved State keys.
//! - [`devices`]: the one save-compatible device list (display, Mac keyboard/trackpad, vsock,
//!   no entropy) of runners and warm slots; the install VM's.
//! - [`limits`]: framework/host limits and the host reserve; [`version`]: macOS gates.
//! - [`hardware`]: `HardwareModel.json` and the VZ bytes in `MachineIdentifier.json`.
//! - [`identity`]: `machineIdentity = "per-runner" | "template"`; [`disk_format`]: raw/ASIF.
//! - [`mac_address`]: guest MACs; [`leases`]: bootpd's lease file, by MAC.
//! - [`slots`]: the two Saved State warm slots; [`state`]: VM states and exit reports.
//! - [`template`]: vz template files (and `VzOptions.json`); [`tart`]: import of a tart VM.
//! - [`launchd`]: the agent's LaunchDaemon; [`host`]: `probe()` / `is_supported()`.
//! - [`errors`]: [`VzError`] and the `VZErrorDomain` code mapping.
//! - `ffi` (macOS, or `typecheck`): VZ objects, the VM handle, IPSW install.

// Cargo.toml allows unsafe for this crate (the FFI needs it); only `ffi` may use it.
#![deny(unsafe_code)]

pub mod devices;
pub mod disk_format;
pub mod errors;
pub mod hardware;
pub mod host;
pub mod identity;
pub mod launchd;
pub mod leases;
pub mod limits;
pub mod mac_address;
pub mod plan;
pub mod slots;
pub mod state;
pub mod tart;
pub mod template;
pub mod version;

mod fsutil;

#[cfg(any(target_vendor = "apple", feature = "typecheck"))]
#[allow(unsafe_code)]
pub mod ffi;

pub use errors::VzError;
pub use host::{is_supported, probe, HostInfo};
pub use plan::{PlanRequest, VmPlan};
