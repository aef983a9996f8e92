//! The two opaque blobs a macOS guest's identity is made of, and the JSON files that keep them.
//!
//! - `HardwareModel.json` (template, fixed): `{"hardwareModel": "<base64>"}`, the bytes of
//!   `VZMacHardwareModel.dataRepresentation`.
//! - `MachineIdentifier.json` (runner bundle, fresh per runner): the agent's
//!   `{"ecid": "<16 hex digits>"}` plus, for VZ, `"vzMachineIdentifier": "<base64>"`, the bytes
//!   of `VZMacMachineIdentifier.dataRepresentation`. The agent's own reader ignores the extra
//!   field; `ecid` stays the agent's 64-bit id (the MAC is derived from it). The VZ bytes are
//!   made by the framework (`VZMacMachineIdentifier new`), never synthesized here: Apple
//!   documents them as opaque.
//!
//! Both blobs are Apple binary property lists today; nothing here depends on that.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const HARDWARE_MODEL_FILE: &str = "HardwareModel.json";
pub const MACHINE_IDENTIFIER_FILE: &str = "MachineIdentifier.json";

/// Far above the ~100-200 bytes the framework produces; refuses garbage early.
const MAX_BLOB_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes; a real one is a few hundred at most")]
    TooLarge { what: &'static str, len: usize },
    #[error("{what} is not valid base64")]
    Base64 {
        what: &'static str,
        #[source]
        source: base64::DecodeError,
    },
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
    #[error("{path} has no vzMachineIdentifier; the bundle was not made for the vz backend")]
    NoVzIdentifier { path: PathBuf },
}

fn check_blob(what: &'static str, bytes: &[u8]) -> Result<(), HardwareError> {
    if bytes.is_empty() {
        return Err(HardwareError::Empty { what });
    }
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(HardwareError::TooLarge {
            what,
            len: bytes.len(),
        });
    }
    Ok(())
}

fn decode_blob(what: &'static str, text: &str) -> Result<Vec<u8>, HardwareError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|source| HardwareError::Base64 { what, source })?;
    check_blob(what, &bytes)?;
    Ok(bytes)
}

/// `VZMacHardwareModel.dataRepresentation`: fixed per template.
#[derive(Clone, PartialEq, Eq)]
pub struct HardwareModel(Vec<u8>);

/// `VZMacMachineIdentifier.dataRepresentation`: unique per running VM.
#[derive(Clone, PartialEq, Eq)]
pub struct VzMachineIdentifier(Vec<u8>);

macro_rules! opaque_blob {
    ($ty:ident, $what:literal) => {
        impl $ty {
            pub const WHAT: &'static str = $what;

            pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, HardwareError> {
                check_blob($what, &bytes)?;
                Ok(Self(bytes))
            }

            pub fn from_base64(text: &str) -> Result<Self, HardwareError> {
                decode_blob($what, text).map(Self)
            }

            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            pub fn to_base64(&self) -> String {
                STANDARD.encode(&self.0)
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({} bytes)", stringify!($ty), self.0.len())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_base64())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::from_base64(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

opaque_blob!(HardwareModel, "the hardware model");
opaque_blob!(VzMachineIdentifier, "the VZ machine identifier");

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HardwareModelJson {
    hardware_model: HardwareModel,
}

/// Reads `<dir>/HardwareModel.json`.
pub fn read_hardware_model(dir: &Path) -> Result<HardwareModel, HardwareError> {
    let path = dir.join(HARDWARE_MODEL_FILE);
    let json: HardwareModelJson = read_json(&path)?;
    Ok(json.hardware_model)
}

/// Writes `<dir>/HardwareModel.json` atomically.
pub fn write_hardware_model(dir: &Path, model: &HardwareModel) -> Result<PathBuf, HardwareError> {
    let path = dir.join(HARDWARE_MODEL_FILE);
    let json = HardwareModelJson {
        hardware_model: model.clone(),
    };
    crate::fsutil::write_json_atomic(&path, &json).map_err(|source| HardwareError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A runner's `MachineIdentifier.json`, as the agent writes it plus the VZ bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineIdentifierFile {
    /// The agent's 64-bit machine identifier, 16 hex digits in JSON.
    #[serde(with = "hex_u64")]
    pub ecid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vz_machine_identifier: Option<VzMachineIdentifier>,
}

impl MachineIdentifierFile {
    /// The VZ bytes, or an error naming the file if the agent wrote none.
    pub fn require_vz(&self, path: &Path) -> Result<&VzMachineIdentifier, HardwareError> {
        self.vz_machine_identifier
            .as_ref()
            .ok_or_else(|| HardwareError::NoVzIdentifier {
                path: path.to_path_buf(),
            })
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{value:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

pub fn read_machine_identifier(bundle_dir: &Path) -> Result<MachineIdentifierFile, HardwareError> {
    read_json(&bundle_dir.join(MACHINE_IDENTIFIER_FILE))
}

/// Writes `<bundle_dir>/MachineIdentifier.json` atomically (replacing the agent's version
/// with one that also carries the VZ bytes).
pub fn write_machine_identifier(
    bundle_dir: &Path,
    file: &MachineIdentifierFile,
) -> Result<PathBuf, HardwareError> {
    let path = bundle_dir.join(MACHINE_IDENTIFIER_FILE);
    crate::fsutil::write_json_atomic(&path, file).map_err(|source| HardwareError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HardwareError> {
    let bytes = std::fs::read(path).map_err(|source| HardwareError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| HardwareError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shaped like the framework's bytes (a binary plist), but only their opacity matters.
    const MODEL: &[u8] = b"bplist00\xd3\x01\x02\x03fake-hardware-model";
    const IDENT: &[u8] = b"bplist00\xd1\x01\x02TECID\x13fake-ecid";

    #[test]
    fn hardware_model_json_round_trips_in_the_documented_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = HardwareModel::from_bytes(MODEL.to_vec()).expect("model");
        let path = write_hardware_model(dir.path(), &model).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["hardwareModel"], STANDARD.encode(MODEL));
        assert_eq!(json.as_object().expect("object").len(), 1);
        assert_eq!(read_hardware_model(dir.path()).expect("read back"), model);
    }

    #[test]
    fn bad_hardware_model_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(HARDWARE_MODEL_FILE);
        for (text, needle) in [
            (r#"{"hardwareModel": "not base64!"}"#, "not valid"),
            (r#"{"hardwareModel": ""}"#, "not valid"),
            (r#"{"hardwareModel": "AAAA", "extra": 1}"#, "not valid"),
            (r#"{}"#, "not valid"),
        ] {
            std::fs::write(&path, text).expect("write");
            let error = read_hardware_model(dir.path()).expect_err(text);
            assert!(error.to_string().contains(needle), "{text}: {error}");
        }
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(
            read_hardware_model(dir.path()),
            Err(HardwareError::Io { .. })
        ));
        assert!(HardwareModel::from_bytes(Vec::new()).is_err());
        assert!(HardwareModel::from_bytes(vec![0; MAX_BLOB_BYTES + 1]).is_err());
    }

    #[test]
    fn machine_identifier_reads_the_agents_format_and_round_trips_the_vz_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Exactly what crates/agent/src/bundle.rs writes.
        std::fs::write(
            dir.path().join(MACHINE_IDENTIFIER_FILE),
            r#"{"ecid":"00000000000000ab"}"#,
        )
        .expect("write");
        let agent = read_machine_identifier(dir.path()).expect("agent format");
        assert_eq!(agent.ecid, 0xab);
        assert!(agent.vz_machine_identifier.is_none());
        assert!(matches!(
            agent.require_vz(dir.path()),
            Err(HardwareError::NoVzIdentifier { .. })
        ));

        let with_vz = MachineIdentifierFile {
            ecid: 0xab,
            vz_machine_identifier: Some(
                VzMachineIdentifier::from_bytes(IDENT.to_vec()).expect("ident"),
            ),
        };
        write_machine_identifier(dir.path(), &with_vz).expect("write");
        let text = std::fs::read_to_string(dir.path().join(MACHINE_IDENTIFIER_FILE)).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["ecid"], "00000000000000ab");
        assert_eq!(json["vzMachineIdentifier"], STANDARD.encode(IDENT));
        let back = read_machine_identifier(dir.path()).expect("read back");
        assert_eq!(back, with_vz);
        assert_eq!(back.require_vz(dir.path()).expect("vz").as_bytes(), IDENT);
    }

    #[test]
    fn debug_output_does_not_dump_the_bytes() {
        let ident = VzMachineIdentifier::from_bytes(IDENT.to_vec()).expect("ident");
        assert_eq!(
            format!("{ident:?}"),
            format!("VzMachineIdentifier({} bytes)", IDENT.len())
        );
    }
}
