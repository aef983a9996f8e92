//! Which devices a macOS guest gets, decided in one place.
//!
//! Every VM that may be saved or restored (runners, cold or warm, and the warm slots they
//! restore from) gets [`Devices::save_compatible`]: one list, so a cold runner and a restored
//! one are the same machine, and the list is part of the Saved State key. It follows what tart
//! has proven on real Macs:
//! - no entropy device, no USB input and no audio input: one unsupported device makes
//!   `saveMachineStateToURL` fail (tart Sources/tart/VM.swift `craftConfiguration`:
//!   `if !suspendable { entropyDevices = … }`; tart commit 2014de7, tart PR #527, tart#803).
//!   Apple's own macOS sample has no entropy device either;
//! - a display, a Mac keyboard and a Mac trackpad (tart Sources/tart/Platform/Darwin.swift
//!   `keyboardsSuspendable`/`pointingDevicesSuspendable`): a macOS guest without a display
//!   crashes WindowServer (UTM#4760), and UI tests, Simulator and screenshot jobs need one
//!   (tart#1212);
//! - a virtio socket (vsock): the host's private channel to the guest's runner-agent
//!   (tart keeps it on suspendable VMs).
//!
//! The install VM of `template create --ipsw` is never saved: it also gets an entropy device,
//! as tart's non-suspendable VMs do.

use crate::version::MacosVersion;
use serde::{Deserialize, Serialize};

/// One display of the Mac graphics device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Display {
    pub width_px: u32,
    pub height_px: u32,
    pub pixels_per_inch: u32,
}

impl Default for Display {
    /// 1920×1080 at 72 ppi (tart's pixel-unit displays use 72 ppi, Darwin.swift
    /// `graphicsDevice`).
    fn default() -> Self {
        Self {
            width_px: 1920,
            height_px: 1080,
            pixels_per_inch: 72,
        }
    }
}

impl Display {
    /// Whether the framework would take it (sizes it accepts; checked before any VZ call).
    pub fn is_valid(&self) -> bool {
        let px = 1..=8192;
        px.contains(&self.width_px)
            && px.contains(&self.height_px)
            && (36..=600).contains(&self.pixels_per_inch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Keyboard {
    /// `VZMacKeyboardConfiguration` (host macOS 14+): save-compatible.
    Mac,
    /// `VZUSBKeyboardConfiguration`: not save-compatible (tart#803).
    Usb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Pointer {
    /// `VZMacTrackpadConfiguration` (host macOS 13+): save-compatible.
    MacTrackpad,
    /// `VZUSBScreenCoordinatePointingDeviceConfiguration`: not save-compatible.
    UsbScreenCoordinate,
}

/// What a VM is for; decides its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPurpose {
    /// A runner, booted cold or restored from a warm slot (same devices either way).
    Runner,
    /// A warm slot's VM: booted, paused and saved.
    WarmSlot,
    /// `template create --ipsw`: installs macOS, never saved.
    Install,
}

impl VmPurpose {
    /// Whether VMs of this purpose are saved or restored (their devices must all be
    /// save-compatible).
    pub fn saveable(self) -> bool {
        !matches!(self, VmPurpose::Install)
    }
}

/// The devices besides disks and network (those every VM has, in the plan's fixed order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Devices {
    pub entropy: bool,
    pub vsock: bool,
    pub display: Option<Display>,
    pub keyboard: Option<Keyboard>,
    pub pointer: Option<Pointer>,
}

/// The first device of a set that would make a save or restore fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotSaveCompatible {
    #[error("a virtio entropy device")]
    Entropy,
    #[error("a USB keyboard (the Mac keyboard needs a macOS 14 host)")]
    UsbKeyboard,
    #[error("a USB pointing device")]
    UsbPointer,
}

impl Devices {
    /// The one device list of every saveable VM: vsock, a display (`display`, the template's
    /// choice; `None` only where a template asks for headless), Mac keyboard and trackpad,
    /// no entropy.
    pub fn save_compatible(display: Option<Display>) -> Devices {
        Devices {
            entropy: false,
            vsock: true,
            display,
            keyboard: Some(Keyboard::Mac),
            pointer: Some(Pointer::MacTrackpad),
        }
    }

    /// The devices of a VM for `purpose` on a host running `host`. Below macOS 14 (where
    /// nothing is saved anyway) the keyboard is USB: the Mac keyboard needs macOS 14 (tart
    /// Darwin.swift `keyboards`).
    pub fn for_purpose(
        purpose: VmPurpose,
        host: MacosVersion,
        display: Option<Display>,
    ) -> Devices {
        let mut devices = Devices::save_compatible(display);
        if host < MAC_KEYBOARD_HOST {
            devices.keyboard = Some(Keyboard::Usb);
        }
        if purpose == VmPurpose::Install {
            devices.entropy = true;
            devices.vsock = false;
        }
        devices
    }

    /// `Ok` when every device survives `saveMachineStateToURL`/`restoreMachineStateFromURL`.
    pub fn check_save_compatible(&self) -> Result<(), NotSaveCompatible> {
        if self.entropy {
            return Err(NotSaveCompatible::Entropy);
        }
        if self.keyboard == Some(Keyboard::Usb) {
            return Err(NotSaveCompatible::UsbKeyboard);
        }
        if self.pointer == Some(Pointer::UsbScreenCoordinate) {
            return Err(NotSaveCompatible::UsbPointer);
        }
        Ok(())
    }
}

/// `VZMacKeyboardConfiguration` needs a macOS 14 host.
pub const MAC_KEYBOARD_HOST: MacosVersion = MacosVersion::new(14, 0, 0);

#[cfg(test)]
mod tests {
    use super::*;

    const SONOMA: MacosVersion = MacosVersion::new(14, 0, 0);
    const TAHOE: MacosVersion = MacosVersion::new(26, 0, 0);
    const VENTURA: MacosVersion = MacosVersion::new(13, 6, 0);

    #[test]
    fn runners_cold_or_warm_and_warm_slots_share_one_save_compatible_list() {
        let display = Some(Display::default());
        for host in [SONOMA, TAHOE] {
            let runner = Devices::for_purpose(VmPurpose::Runner, host, display);
            let slot = Devices::for_purpose(VmPurpose::WarmSlot, host, display);
            assert_eq!(
                runner, slot,
                "cold and restored runners are the same machine"
            );
            assert_eq!(runner, Devices::save_compatible(display));
            assert!(!runner.entropy, "macOS guests get no entropy device");
            assert!(runner.vsock);
            assert_eq!(runner.keyboard, Some(Keyboard::Mac));
            assert_eq!(runner.pointer, Some(Pointer::MacTrackpad));
            runner.check_save_compatible().expect("saveable");
        }
    }

    #[test]
    fn the_default_display_is_1920_by_1080() {
        let devices = Devices::for_purpose(VmPurpose::Runner, TAHOE, Some(Display::default()));
        let display = devices.display.expect("a display by default");
        assert_eq!((display.width_px, display.height_px), (1920, 1080));
        assert!(display.is_valid());
        assert!(!Display {
            width_px: 0,
            ..Display::default()
        }
        .is_valid());
    }

    #[test]
    fn the_install_vm_gets_entropy_and_is_not_saveable() {
        let install = Devices::for_purpose(VmPurpose::Install, TAHOE, Some(Display::default()));
        assert!(install.entropy);
        assert!(!install.vsock);
        assert_eq!(
            install.check_save_compatible(),
            Err(NotSaveCompatible::Entropy)
        );
        assert!(!VmPurpose::Install.saveable());
        assert!(VmPurpose::Runner.saveable() && VmPurpose::WarmSlot.saveable());
    }

    #[test]
    fn a_macos_13_host_gets_a_usb_keyboard_which_cannot_be_saved() {
        let devices = Devices::for_purpose(VmPurpose::Runner, VENTURA, None);
        assert_eq!(devices.keyboard, Some(Keyboard::Usb));
        assert_eq!(
            devices.check_save_compatible(),
            Err(NotSaveCompatible::UsbKeyboard)
        );
        let usb_pointer = Devices {
            pointer: Some(Pointer::UsbScreenCoordinate),
            ..Devices::save_compatible(None)
        };
        assert_eq!(
            usb_pointer.check_save_compatible(),
            Err(NotSaveCompatible::UsbPointer)
        );
    }
}
