//! Host macOS versions and the features they gate, as plain values: the FFI reads the real
//! version (`NSProcessInfo.operatingSystemVersion`) and asks these functions.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacosVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl MacosVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for MacosVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The release shoes-vz is designed and tuned for. Older hosts that pass [`HostFeature`]
/// gates work but are not what the defaults were chosen on.
pub const DESIGN_TARGET: MacosVersion = MacosVersion::new(26, 0, 0);

/// What a host must run for a piece of shoes-vz to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFeature {
    /// Booting macOS guests as this crate configures them: opening existing auxiliary
    /// storage with `VZMacAuxiliaryStorage initWithURL:` needs macOS 13.
    MacosGuests,
    /// `saveMachineStateToURL:` / `restoreMachineStateFromURL:` (warm slots): macOS 14.
    SavedState,
}

impl HostFeature {
    pub const fn minimum(self) -> MacosVersion {
        match self {
            HostFeature::MacosGuests => MacosVersion::new(13, 0, 0),
            HostFeature::SavedState => MacosVersion::new(14, 0, 0),
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            HostFeature::MacosGuests => "run macOS guests",
            HostFeature::SavedState => "save and restore VM state (warm slots)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("{text:?} is not a macOS version; expected MAJOR[.MINOR[.PATCH]], e.g. 26.0.1")]
    Parse { text: String },
    #[error("this host runs macOS {have}; to {} it needs macOS {} or later: upgrade the host or turn the feature off", feature.describe(), feature.minimum())]
    TooOld {
        feature: HostFeature,
        have: MacosVersion,
    },
}

impl FromStr for MacosVersion {
    type Err = VersionError;

    /// Parses `sw_vers -productVersion` style text: `14`, `14.2` or `14.2.1`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError::Parse {
            text: text.chars().take(40).collect(),
        };
        let trimmed = text.trim();
        let parts: Vec<&str> = trimmed.split('.').collect();
        if trimmed.is_empty() || parts.len() > 3 {
            return Err(bad());
        }
        let mut numbers = [0u32; 3];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if part.is_empty() || part.len() > 4 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            *slot = part.parse().map_err(|_| bad())?;
        }
        Ok(MacosVersion::new(numbers[0], numbers[1], numbers[2]))
    }
}

pub fn supports(feature: HostFeature, host: MacosVersion) -> bool {
    host >= feature.minimum()
}

pub fn require(feature: HostFeature, host: MacosVersion) -> Result<(), VersionError> {
    if supports(feature, host) {
        Ok(())
    } else {
        Err(VersionError::TooOld {
            feature,
            have: host,
        })
    }
}

/// Whether to warn that the host is older than [`DESIGN_TARGET`].
pub fn below_design_target(host: MacosVersion) -> bool {
    host < DESIGN_TARGET
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> MacosVersion {
        text.parse().expect("version")
    }

    #[test]
    fn parses_sw_vers_forms_and_orders_numerically() {
        assert_eq!(v("14"), MacosVersion::new(14, 0, 0));
        assert_eq!(v("13.6"), MacosVersion::new(13, 6, 0));
        assert_eq!(v(" 26.0.1\n"), MacosVersion::new(26, 0, 1));
        // 13.10 is newer than 13.9: compared as numbers, not text.
        assert!(v("13.10") > v("13.9"));
        assert_eq!(v("15.1.2").to_string(), "15.1.2");
        for bad in ["", "14.", ".14", "14.x", "1.2.3.4", "-1", "14 .1", "99999"] {
            assert!(bad.parse::<MacosVersion>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn saved_state_needs_macos_14() {
        assert!(require(HostFeature::SavedState, v("13.6.9")).is_err());
        assert!(require(HostFeature::SavedState, v("14.0")).is_ok());
        assert!(require(HostFeature::SavedState, v("26.0")).is_ok());
        let message = require(HostFeature::SavedState, v("13.5"))
            .expect_err("too old")
            .to_string();
        assert!(
            message.contains("13.5.0") && message.contains("14.0.0"),
            "{message}"
        );
    }

    #[test]
    fn macos_guests_need_macos_13_and_26_is_the_design_target() {
        assert!(!supports(HostFeature::MacosGuests, v("12.7")));
        assert!(supports(HostFeature::MacosGuests, v("13.0")));
        assert!(below_design_target(v("15.4")));
        assert!(!below_design_target(v("26.0")));
        assert!(!below_design_target(v("26.1")));
    }
}
