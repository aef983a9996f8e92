//! `shoes-vz template import-tart DIR`: a tart VM directory (`config.json`, `disk.img`,
//! `nvram.bin`) becomes a vz template (`Disk.img`, `AuxiliaryStorage` cloned copy-on-write,
//! `HardwareModel.json`, `TemplateMetadata.json`, all read-only).
//!
//! tart's `ecid` (its VM's `VZMacMachineIdentifier`) is always checked; it is kept in the
//! template's `VzOptions.json` only with `machineIdentity = "template"` (otherwise every
//! runner gets a fresh identifier; see [`crate::identity`]). tart's `diskFormat` (`raw` or
//! `asif`) is kept there too; ASIF is refused on a host older than macOS 26.

use crate::disk_format::{DiskFormat, DiskFormatError};
use crate::hardware::{self, HardwareModel, VzMachineIdentifier};
use crate::identity::MachineIdentityPolicy;
use crate::limits::MIB;
use crate::mac_address::MacAddress;
use crate::plan::{AUXILIARY_STORAGE_FILE, DISK_FILE};
use crate::template::{
    self, GuestAgent, TemplateError, TemplateInfo, TemplateLimits, TemplateMetadata, VzOptions,
};
use crate::version::MacosVersion;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const DISK: &str = "disk.img";
pub const NVRAM: &str = "nvram.bin";
/// Present while a tart VM is suspended: its disk is then not cleanly shut down.
pub const SUSPENDED_STATE: &str = "state.vzvmsave";

/// tart's `config.json` (tart's `VMConfig` + `Darwin` platform). Unknown fields are accepted:
/// tart adds fields over time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TartConfig {
    pub version: u32,
    #[serde(default = "default_os")]
    pub os: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default)]
    pub cpu_count_min: Option<u32>,
    pub cpu_count: u32,
    #[serde(default)]
    pub memory_size_min: Option<u64>,
    pub memory_size: u64,
    pub mac_address: String,
    #[serde(default)]
    pub display: Option<TartDisplay>,
    #[serde(default)]
    pub hardware_model: Option<String>,
    #[serde(default)]
    pub ecid: Option<String>,
    /// `raw` (absent) or `asif` (tart DiskImageFormat.swift).
    #[serde(default)]
    pub disk_format: Option<String>,
}

fn default_os() -> String {
    "darwin".into()
}

fn default_arch() -> String {
    "arm64".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TartDisplay {
    pub width: u32,
    pub height: u32,
}

/// A parsed and checked tart macOS VM.
#[derive(Debug, Clone)]
pub struct TartVm {
    pub config: TartConfig,
    pub hardware_model: HardwareModel,
    /// tart's VM identity: checked, never reused for runners.
    pub machine_identifier: VzMachineIdentifier,
    pub mac: MacAddress,
    pub disk_format: DiskFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum TartError {
    #[error("cannot read tart's {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a tart config.json")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tart VM {dir}: {problem}")]
    Invalid { dir: PathBuf, problem: String },
    #[error("tart VM {dir} is suspended ({SUSPENDED_STATE} exists): its disk is not cleanly shut down; run it and shut it down from inside (or `tart stop`) first")]
    Suspended { dir: PathBuf },
    #[error("cannot clone {src} to {dst} copy-on-write; put the tart VM and the templates directory on the same APFS volume (XFS/btrfs on Linux): an import never falls back to a full copy")]
    Clone {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("tart VM {dir}: its disk cannot be served here")]
    DiskFormat {
        dir: PathBuf,
        #[source]
        source: DiskFormatError,
    },
}

/// Parses and checks tart's `config.json` bytes (`dir` only names the VM in errors).
pub fn parse_config(dir: &Path, bytes: &[u8]) -> Result<TartVm, TartError> {
    let path = dir.join(CONFIG_FILE);
    let config: TartConfig =
        serde_json::from_slice(bytes).map_err(|source| TartError::Parse { path, source })?;
    let invalid = |problem: String| TartError::Invalid {
        dir: dir.to_path_buf(),
        problem,
    };
    if config.version != 1 {
        return Err(invalid(format!(
            "config.json version {} is not the one this importer knows (1)",
            config.version
        )));
    }
    if config.os != "darwin" {
        return Err(invalid(format!(
            "os is {:?}; only macOS (darwin) VMs can be vz templates",
            config.os
        )));
    }
    if config.arch != "arm64" {
        return Err(invalid(format!(
            "arch is {:?}; macOS guests need Apple silicon (arm64)",
            config.arch
        )));
    }
    if config.cpu_count == 0 || config.memory_size < MIB {
        return Err(invalid("cpuCount and memorySize must be above zero".into()));
    }
    let hardware_model = match &config.hardware_model {
        Some(text) => {
            HardwareModel::from_base64(text).map_err(|e| invalid(format!("hardwareModel: {e}")))?
        }
        None => return Err(invalid("hardwareModel is missing".into())),
    };
    let machine_identifier = match &config.ecid {
        Some(text) => {
            VzMachineIdentifier::from_base64(text).map_err(|e| invalid(format!("ecid: {e}")))?
        }
        None => return Err(invalid("ecid is missing".into())),
    };
    let mac = config
        .mac_address
        .parse()
        .map_err(|e| invalid(format!("macAddress: {e}")))?;
    let disk_format =
        DiskFormat::parse(config.disk_format.as_deref()).map_err(|e| invalid(e.to_string()))?;
    Ok(TartVm {
        config,
        hardware_model,
        machine_identifier,
        mac,
        disk_format,
    })
}

/// Reads and checks a tart VM directory (config and both files) without changing anything.
pub fn read_vm(dir: &Path) -> Result<TartVm, TartError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path).map_err(|source| TartError::Read { path, source })?;
    let vm = parse_config(dir, &bytes)?;
    for file in [DISK, NVRAM] {
        let path = dir.join(file);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(_) => {
                return Err(TartError::Invalid {
                    dir: dir.to_path_buf(),
                    problem: format!("{file} is not a regular file"),
                })
            }
            Err(source) => return Err(TartError::Read { path, source }),
        }
    }
    if dir.join(SUSPENDED_STATE).exists() {
        return Err(TartError::Suspended {
            dir: dir.to_path_buf(),
        });
    }
    Ok(vm)
}

/// What the operator picks for the new template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TartImportOptions {
    pub name: String,
    pub version: String,
    pub labels: Vec<String>,
    /// The guest user the agent logs in as (tart's images use `admin`).
    pub ssh_user: String,
    pub setup_shell: String,
    /// Largest runner the template serves; defaults to the tart VM's own cpuCount/memorySize.
    pub limits: Option<TemplateLimits>,
    /// The image runs the runner-agent (the default; the runner is watched in myshoes'
    /// `/tmp/runner`).
    pub guest_agent: Option<GuestAgent>,
    /// `per-runner` (default) or `template` (keeps tart's `ecid` for every runner).
    pub machine_identity: MachineIdentityPolicy,
    /// The host's macOS when known (on a Mac): an ASIF disk is refused below macOS 26. Off
    /// macOS it is unknown and the agent checks at start.
    pub host_macos: Option<MacosVersion>,
}

impl TartImportOptions {
    pub fn new(name: &str, version: &str, labels: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            labels,
            ssh_user: "admin".to_string(),
            setup_shell: "bash -s".to_string(),
            limits: None,
            guest_agent: Some(GuestAgent {
                runner_dir: template::default_runner_dir(),
            }),
            machine_identity: MachineIdentityPolicy::default(),
            host_macos: None,
        }
    }
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct ImportedTemplate {
    pub dir: PathBuf,
    pub metadata: TemplateMetadata,
    pub hardware_model: HardwareModel,
    pub options: VzOptions,
}

/// Clones `src` to a new file `dst`.
pub type CloneFn<'a> = &'a dyn Fn(&Path, &Path) -> std::io::Result<()>;

/// Copy-on-write clone that never falls back to a copy (APFS clonefile, FICLONE elsewhere).
pub fn reflink_clone(src: &Path, dst: &Path) -> std::io::Result<()> {
    reflink_copy::reflink(src, dst)
}

/// Imports the tart VM at `tart_vm_dir` as a new template at `template_dir` (which must not
/// exist). On any failure the half-built template directory is removed.
pub fn import_tart(
    tart_vm_dir: &Path,
    template_dir: &Path,
    options: &TartImportOptions,
    clone: CloneFn<'_>,
) -> Result<ImportedTemplate, TartError> {
    let vm = read_vm(tart_vm_dir)?;
    if let Some(host) = options.host_macos {
        vm.disk_format
            .check_host(host)
            .map_err(|source| TartError::DiskFormat {
                dir: tart_vm_dir.to_path_buf(),
                source,
            })?;
    }
    let vz_options = VzOptions {
        machine_identity: options.machine_identity,
        machine_identifier: (options.machine_identity == MachineIdentityPolicy::Template)
            .then(|| vm.machine_identifier.clone()),
        disk_format: vm.disk_format,
        ..VzOptions::default()
    };
    vz_options.validate()?;
    let info = TemplateInfo {
        name: options.name.clone(),
        version: options.version.clone(),
        labels: options.labels.clone(),
        ssh_user: options.ssh_user.clone(),
        setup_shell: options.setup_shell.clone(),
        limits: options.limits.unwrap_or(TemplateLimits {
            max_vcpus: vm.config.cpu_count,
            max_memory_mib: vm.config.memory_size / MIB,
        }),
        guest_agent: options.guest_agent.clone(),
    };
    info.validate()?;
    template::create_dir(template_dir)?;
    let built = fill(tart_vm_dir, template_dir, &vm, &info, &vz_options, clone);
    if built.is_err() {
        if let Err(error) = remove_half_built(template_dir) {
            tracing::error!(template = %template_dir.display(), error = %error, "cannot remove a half-built template");
        }
    }
    built
}

fn fill(
    tart_vm_dir: &Path,
    template_dir: &Path,
    vm: &TartVm,
    info: &TemplateInfo,
    options: &VzOptions,
    clone: CloneFn<'_>,
) -> Result<ImportedTemplate, TartError> {
    for (src, dst) in [(DISK, DISK_FILE), (NVRAM, AUXILIARY_STORAGE_FILE)] {
        let (src, dst) = (tart_vm_dir.join(src), template_dir.join(dst));
        clone(&src, &dst).map_err(|source| TartError::Clone { src, dst, source })?;
    }
    hardware::write_hardware_model(template_dir, &vm.hardware_model)
        .map_err(TemplateError::from)?;
    template::write_metadata(template_dir, info)?;
    template::write_options(template_dir, options)?;
    template::seal(template_dir)?;
    Ok(ImportedTemplate {
        dir: template_dir.to_path_buf(),
        metadata: info.metadata(),
        hardware_model: vm.hardware_model.clone(),
        options: options.clone(),
    })
}

/// Removes a template directory this import created (files may already be read-only; on
/// Unix removing them needs only the directory's write permission).
fn remove_half_built(dir: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tart-vm")
    }

    fn fixture_config() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture().join(CONFIG_FILE)).expect("fixture"))
            .expect("json")
    }

    #[test]
    fn parses_tarts_real_format() {
        let vm = read_vm(&fixture()).expect("fixture parses");
        assert_eq!(vm.config.cpu_count, 4);
        assert_eq!(vm.config.cpu_count_min, Some(4));
        assert_eq!(vm.config.memory_size, 8 * 1024 * MIB);
        assert_eq!(
            vm.config.display,
            Some(TartDisplay {
                width: 1024,
                height: 768
            })
        );
        assert_eq!(vm.mac.to_string(), "7a:1c:43:5b:93:07");
        assert!(vm.hardware_model.as_bytes().starts_with(b"bplist00"));
        assert!(vm.machine_identifier.as_bytes().starts_with(b"bplist00"));
    }

    #[test]
    fn unknown_fields_are_accepted_and_defaults_apply() {
        let mut config = fixture_config();
        config["someFutureField"] = serde_json::json!({"x": 1});
        let object = config.as_object_mut().expect("object");
        object.remove("os");
        object.remove("arch");
        object.remove("display");
        let vm = parse_config(
            Path::new("/vm"),
            &serde_json::to_vec(&config).expect("json"),
        )
        .expect("parses");
        assert_eq!(vm.config.os, "darwin");
        assert_eq!(vm.config.arch, "arm64");
        assert_eq!(vm.config.display, None);
        assert_eq!(vm.disk_format, DiskFormat::Raw, "absent diskFormat is raw");
        config["diskFormat"] = serde_json::json!("asif");
        let vm = parse_config(
            Path::new("/vm"),
            &serde_json::to_vec(&config).expect("json"),
        )
        .expect("asif parses");
        assert_eq!(vm.disk_format, DiskFormat::Asif);
    }

    #[test]
    fn linux_vms_and_broken_blobs_are_refused() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("os", serde_json::json!("linux"), "only macOS"),
            ("arch", serde_json::json!("amd64"), "Apple silicon"),
            ("version", serde_json::json!(2), "version 2"),
            ("hardwareModel", serde_json::json!("%%%"), "hardwareModel"),
            ("ecid", serde_json::json!(""), "ecid"),
            ("macAddress", serde_json::json!("nope"), "macAddress"),
            ("cpuCount", serde_json::json!(0), "cpuCount"),
            ("diskFormat", serde_json::json!("qcow2"), "diskFormat"),
        ];
        for (field, value, needle) in cases {
            let mut config = fixture_config();
            config[field] = value;
            let error = parse_config(
                Path::new("/vm"),
                &serde_json::to_vec(&config).expect("json"),
            )
            .expect_err(field)
            .to_string();
            assert!(error.contains(needle), "{field}: {error}");
        }
        for missing in ["hardwareModel", "ecid"] {
            let mut config = fixture_config();
            config.as_object_mut().expect("object").remove(missing);
            let error = parse_config(
                Path::new("/vm"),
                &serde_json::to_vec(&config).expect("json"),
            )
            .expect_err(missing)
            .to_string();
            assert!(error.contains("missing"), "{error}");
        }
        assert!(matches!(
            parse_config(Path::new("/vm"), b"{not json"),
            Err(TartError::Parse { .. })
        ));
    }
}
