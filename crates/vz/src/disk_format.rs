//! The boot disk's image format: tart's `diskFormat` in `config.json` is `raw` (the default)
//! or `asif` (Apple Sparse Image Format), which only macOS 26+ hosts can open (tart
//! Sources/tart/DiskImageFormat.swift `isSupported`). Read on import, kept in the template's
//! `VzOptions.json`, checked against the host before a template is served.

use crate::version::MacosVersion;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Asif,
}

/// ASIF images open on macOS 26 and later.
pub const ASIF_HOST: MacosVersion = MacosVersion::new(26, 0, 0);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskFormatError {
    #[error("diskFormat {text:?} is not one shoes-vz knows; expected \"raw\" or \"asif\"")]
    Unknown { text: String },
    #[error("the disk is in ASIF (Apple Sparse Image Format), which needs a macOS {ASIF_HOST} host; this host runs {host}: update the host, or convert the disk to raw first (`diskutil image convert --format RAW …` on a macOS 26 Mac) and re-import")]
    AsifNeedsNewerHost { host: MacosVersion },
}

impl DiskFormat {
    /// tart's spelling (absent means raw).
    pub fn parse(text: Option<&str>) -> Result<DiskFormat, DiskFormatError> {
        match text {
            None | Some("raw") => Ok(DiskFormat::Raw),
            Some("asif") => Ok(DiskFormat::Asif),
            Some(other) => Err(DiskFormatError::Unknown {
                text: other.chars().take(40).collect(),
            }),
        }
    }

    /// Refuses a format this host's macOS cannot open.
    pub fn check_host(self, host: MacosVersion) -> Result<(), DiskFormatError> {
        match self {
            DiskFormat::Asif if host < ASIF_HOST => {
                Err(DiskFormatError::AsifNeedsNewerHost { host })
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Asif => "asif",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tart_spellings_parse_and_unknown_ones_are_refused() {
        assert_eq!(DiskFormat::parse(None), Ok(DiskFormat::Raw));
        assert_eq!(DiskFormat::parse(Some("raw")), Ok(DiskFormat::Raw));
        assert_eq!(DiskFormat::parse(Some("asif")), Ok(DiskFormat::Asif));
        let error = DiskFormat::parse(Some("qcow2")).expect_err("unknown");
        assert!(error.to_string().contains("qcow2"), "{error}");
        assert_eq!(DiskFormat::Asif.to_string(), "asif");
    }

    #[test]
    fn asif_is_refused_below_macos_26_with_what_to_do() {
        let sequoia = MacosVersion::new(15, 6, 0);
        let error = DiskFormat::Asif.check_host(sequoia).expect_err("too old");
        let text = error.to_string();
        assert!(text.contains("15.6.0") && text.contains("26.0.0"), "{text}");
        assert!(text.contains("convert"), "{text}");
        DiskFormat::Asif
            .check_host(MacosVersion::new(26, 0, 0))
            .expect("26 opens ASIF");
        DiskFormat::Raw.check_host(sequoia).expect("raw anywhere");
    }
}
