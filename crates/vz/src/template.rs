//! vz templates on disk: `Disk.img`, `AuxiliaryStorage`, `HardwareModel.json` and the agent's
//! `TemplateMetadata.json` (same field layout as `crates/agent/src/template.rs`, which loads
//! it), all read-only. Writing one (`template create --ipsw`, `import-tart`) and checking one
//! are plain file work; whether the hardware model runs on this host is asked of the framework
//! (`ffi::hardware_model_supported`).
//!
//! `VzOptions.json` ([`VzOptions`]) holds what only the vz backend reads: the display, the
//! machine identity policy (and the template's identifier for `"template"`), the disk format.
//! It is optional (absent: the defaults) and never cloned into bundles.
//!
//! `diskFiles` lists [`CLONED_FILES`]: the two disks and `HardwareModel.json`. The agent clones
//! them into every runner bundle, so the backend finds the hardware model in the bundle (its
//! VM spec names the bundle, not the template).

use crate::devices::Display;
use crate::disk_format::DiskFormat;
use crate::fsutil;
use crate::hardware::{
    self, HardwareError, HardwareModel, VzMachineIdentifier, HARDWARE_MODEL_FILE,
};
use crate::identity::MachineIdentityPolicy;
use crate::plan::{AUXILIARY_STORAGE_FILE, DISK_FILE};
use serde::{Deserialize, Serialize};
use shoes_vz_model::ids::validate_name;
use std::path::{Path, PathBuf};

pub const METADATA_FILE: &str = "TemplateMetadata.json";
/// The vz backend's own template options ([`VzOptions`]); optional.
pub const OPTIONS_FILE: &str = "VzOptions.json";

/// `VzOptions.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VzOptions {
    /// `"per-runner"` (default) or `"template"` ([`crate::identity`]).
    #[serde(default)]
    pub machine_identity: MachineIdentityPolicy,
    /// The template's own identifier (tart's `ecid`), used by `"template"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_identifier: Option<VzMachineIdentifier>,
    /// The guests' display; `null` for headless guests (WindowServer may crash, UTM#4760, and
    /// UI jobs fail: only for images known to cope).
    #[serde(default = "default_display")]
    pub display: Option<Display>,
    #[serde(default)]
    pub disk_format: DiskFormat,
}

fn default_display() -> Option<Display> {
    Some(Display::default())
}

impl Default for VzOptions {
    fn default() -> Self {
        Self {
            machine_identity: MachineIdentityPolicy::default(),
            machine_identifier: None,
            display: default_display(),
            disk_format: DiskFormat::default(),
        }
    }
}

impl VzOptions {
    pub fn validate(&self) -> Result<(), TemplateError> {
        if self.machine_identity == MachineIdentityPolicy::Template
            && self.machine_identifier.is_none()
        {
            return Err(TemplateError::Invalid(
                "machineIdentity = \"template\" needs the template's machineIdentifier".into(),
            ));
        }
        if let Some(display) = self.display {
            if !display.is_valid() {
                return Err(TemplateError::Invalid(format!(
                    "display {}x{} at {} ppi is out of range (1-8192 pixels, 36-600 ppi)",
                    display.width_px, display.height_px, display.pixels_per_inch
                )));
            }
        }
        Ok(())
    }
}

/// Writes `<dir>/VzOptions.json` (sealed with the rest by [`seal`]).
pub fn write_options(dir: &Path, options: &VzOptions) -> Result<PathBuf, TemplateError> {
    options.validate()?;
    let path = dir.join(OPTIONS_FILE);
    fsutil::write_json_atomic(&path, options).map_err(|source| TemplateError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Reads `<dir>/VzOptions.json`; the defaults when the template has none.
pub fn read_options(dir: &Path) -> Result<VzOptions, TemplateError> {
    let path = dir.join(OPTIONS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VzOptions::default()),
        Err(source) => {
            return Err(TemplateError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    let options: VzOptions = serde_json::from_slice(&bytes).map_err(|e| TemplateError::Check {
        dir: dir.to_path_buf(),
        problem: format!("{OPTIONS_FILE} is not valid: {e}"),
    })?;
    options.validate()?;
    Ok(options)
}
pub const BACKEND: &str = "vz";
/// The files the VM writes: made owner-writable again in each runner bundle.
pub const DISK_FILES: [&str; 2] = [DISK_FILE, AUXILIARY_STORAGE_FILE];
/// `diskFiles` of every vz template: cloned into every runner bundle, in this order.
pub const CLONED_FILES: [&str; 3] = [DISK_FILE, AUXILIARY_STORAGE_FILE, HARDWARE_MODEL_FILE];
/// Where the GitHub Actions runner lives in a macOS guest of `ssh_user` (the default for
/// [`GuestAgent::runner_dir`]).
/// Where myshoes' setup script installs the runner with its default RUNNER_BASE_DIRECTORY
/// (`/tmp` + `/runner`; shared notes: myshoes-setup-script.md M:125-126). On macOS `/tmp` is
/// `/private/tmp`; the runner-agent compares resolved paths.
pub fn default_runner_dir() -> String {
    "/tmp/runner".to_string()
}
/// Every file of a finished template (all made read-only).
pub const TEMPLATE_FILES: [&str; 4] = [
    DISK_FILE,
    AUXILIARY_STORAGE_FILE,
    HARDWARE_MODEL_FILE,
    METADATA_FILE,
];

/// The agent's `TemplateMetadata.json`, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    pub name: String,
    pub version: String,
    pub backend: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub ssh_user: String,
    pub disk_files: Vec<String>,
    pub limits: TemplateLimits,
    pub setup_shell: String,
    /// The guest runs `shoes-vz-runner-agent` (per-runner config disk, notify, status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<GuestAgent>,
}

/// The agent's `guestAgent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestAgent {
    /// The GitHub Actions runner's directory in the guest (absolute).
    pub runner_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateLimits {
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
}

/// What an operator chooses for a new template; the rest is fixed for vz.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    pub name: String,
    pub version: String,
    pub labels: Vec<String>,
    pub ssh_user: String,
    pub limits: TemplateLimits,
    pub setup_shell: String,
    /// `None` only for images that carry their own SSH keys (no runner-agent).
    pub guest_agent: Option<GuestAgent>,
}

impl TemplateInfo {
    /// Checks names with the agent's rules, so a template written here always loads there.
    pub fn validate(&self) -> Result<(), TemplateError> {
        let bad = |e: shoes_vz_model::IdError| TemplateError::Invalid(e.to_string());
        validate_name("template name", &self.name, 64).map_err(bad)?;
        validate_name("template version", &self.version, 64).map_err(bad)?;
        validate_name("sshUser", &self.ssh_user, 32).map_err(bad)?;
        for label in &self.labels {
            validate_name("label", label, 64).map_err(bad)?;
        }
        if self.limits.max_vcpus == 0 || self.limits.max_memory_mib == 0 {
            return Err(TemplateError::Invalid(
                "limits.maxVcpus and limits.maxMemoryMib must be above zero".into(),
            ));
        }
        if self.setup_shell.trim().is_empty() {
            return Err(TemplateError::Invalid("setupShell is empty".into()));
        }
        if let Some(agent) = &self.guest_agent {
            if !agent.runner_dir.starts_with('/') {
                return Err(TemplateError::Invalid(
                    "guestAgent.runnerDir must be an absolute path".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn metadata(&self) -> TemplateMetadata {
        TemplateMetadata {
            name: self.name.clone(),
            version: self.version.clone(),
            backend: BACKEND.to_string(),
            labels: self.labels.clone(),
            ssh_user: self.ssh_user.clone(),
            disk_files: CLONED_FILES.iter().map(|f| f.to_string()).collect(),
            limits: self.limits,
            setup_shell: self.setup_shell.clone(),
            guest_agent: self.guest_agent.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid template settings: {0}")]
    Invalid(String),
    #[error("template {dir}: {problem}")]
    Check { dir: PathBuf, problem: String },
    #[error(transparent)]
    Hardware(#[from] HardwareError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `dir` for a new template; it must not exist yet (templates are never overwritten).
pub fn create_dir(dir: &Path) -> Result<(), TemplateError> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| TemplateError::Io {
            action: "create",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::create_dir(dir).map_err(|source| TemplateError::Io {
        action: "create (it must not exist yet; templates are never overwritten)",
        path: dir.to_path_buf(),
        source,
    })
}

pub fn write_metadata(dir: &Path, info: &TemplateInfo) -> Result<PathBuf, TemplateError> {
    info.validate()?;
    let path = dir.join(METADATA_FILE);
    fsutil::write_json_atomic(&path, &info.metadata()).map_err(|source| TemplateError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Makes every template file read-only: the last step of creating a template.
pub fn seal(dir: &Path) -> Result<(), TemplateError> {
    let options = dir.join(OPTIONS_FILE);
    let optional = options.exists().then_some(OPTIONS_FILE);
    for file in TEMPLATE_FILES.into_iter().chain(optional) {
        let path = dir.join(file);
        fsutil::make_read_only(&path).map_err(|source| TemplateError::Io {
            action: "make read-only",
            path,
            source,
        })?;
    }
    Ok(())
}

/// A template that passed [`check`].
#[derive(Debug, Clone)]
pub struct CheckedTemplate {
    pub dir: PathBuf,
    pub metadata: TemplateMetadata,
    pub hardware_model: HardwareModel,
    pub options: VzOptions,
}

/// Checks a vz template's files: metadata for backend `vz` listing exactly [`CLONED_FILES`],
/// every file present, regular and read-only, `HardwareModel.json` valid.
pub fn check(dir: &Path) -> Result<CheckedTemplate, TemplateError> {
    let problem = |problem: String| TemplateError::Check {
        dir: dir.to_path_buf(),
        problem,
    };
    let optional = dir.join(OPTIONS_FILE).exists().then_some(OPTIONS_FILE);
    for file in TEMPLATE_FILES.into_iter().chain(optional) {
        let path = dir.join(file);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| problem(format!("{file} cannot be read: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(problem(format!("{file} is not a regular file")));
        }
        if !meta.permissions().readonly() {
            return Err(problem(format!(
                "{file} is writable; templates must be read-only (chmod a-w)"
            )));
        }
    }
    let bytes = std::fs::read(dir.join(METADATA_FILE))
        .map_err(|e| problem(format!("{METADATA_FILE} cannot be read: {e}")))?;
    let metadata: TemplateMetadata = serde_json::from_slice(&bytes)
        .map_err(|e| problem(format!("{METADATA_FILE} is not valid: {e}")))?;
    if metadata.backend != BACKEND {
        return Err(problem(format!(
            "backend is {:?}, not {BACKEND:?}",
            metadata.backend
        )));
    }
    if metadata.disk_files != CLONED_FILES {
        return Err(problem(format!(
            "diskFiles is {:?}; a vz template clones exactly {CLONED_FILES:?}",
            metadata.disk_files
        )));
    }
    let hardware_model = hardware::read_hardware_model(dir)?;
    let options = read_options(dir)?;
    Ok(CheckedTemplate {
        dir: dir.to_path_buf(),
        metadata,
        hardware_model,
        options,
    })
}

/// Gives a runner bundle's cloned disk files write permission back: APFS `clonefile` keeps the
/// template's read-only mode, and the VM writes both files.
pub fn make_bundle_writable(bundle_dir: &Path) -> Result<(), TemplateError> {
    for file in DISK_FILES {
        let path = bundle_dir.join(file);
        fsutil::make_owner_writable(&path).map_err(|source| TemplateError::Io {
            action: "make writable",
            path,
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn info() -> TemplateInfo {
        TemplateInfo {
            name: "macos-26".into(),
            version: "1".into(),
            labels: vec!["macos".into(), "arm64".into()],
            ssh_user: "admin".into(),
            limits: TemplateLimits {
                max_vcpus: 8,
                max_memory_mib: 16384,
            },
            setup_shell: "bash -s".into(),
            guest_agent: Some(GuestAgent {
                runner_dir: default_runner_dir(),
            }),
        }
    }

    fn write_template(dir: &Path) {
        create_dir(dir).expect("create");
        std::fs::write(dir.join(DISK_FILE), b"disk").expect("disk");
        std::fs::write(dir.join(AUXILIARY_STORAGE_FILE), b"aux").expect("aux");
        hardware::write_hardware_model(
            dir,
            &HardwareModel::from_bytes(b"model".to_vec()).expect("model"),
        )
        .expect("model");
        write_metadata(dir, &info()).expect("metadata");
    }

    #[test]
    fn metadata_has_the_agents_exact_layout() {
        let json = serde_json::to_value(info().metadata()).expect("json");
        let expected = serde_json::json!({
            "name": "macos-26",
            "version": "1",
            "backend": "vz",
            "labels": ["macos", "arm64"],
            "sshUser": "admin",
            "diskFiles": ["Disk.img", "AuxiliaryStorage", "HardwareModel.json"],
            "limits": {"maxVcpus": 8, "maxMemoryMib": 16384},
            "setupShell": "bash -s",
            "guestAgent": {"runnerDir": "/tmp/runner"}
        });
        assert_eq!(json, expected);
        let without_agent = TemplateInfo {
            guest_agent: None,
            ..info()
        };
        let json = serde_json::to_value(without_agent.metadata()).expect("json");
        assert!(json.get("guestAgent").is_none(), "{json}");
    }

    #[test]
    fn names_follow_the_agents_rules() {
        for change in [
            (|i: &mut TemplateInfo| i.name = "../evil".into()) as fn(&mut TemplateInfo),
            |i| i.version = String::new(),
            |i| i.labels = vec!["has space".into()],
            |i| i.limits.max_vcpus = 0,
            |i| i.setup_shell = " ".into(),
            |i| {
                i.guest_agent = Some(GuestAgent {
                    runner_dir: "actions-runner".into(),
                })
            },
        ] {
            let mut i = info();
            change(&mut i);
            assert!(
                matches!(i.validate(), Err(TemplateError::Invalid(_))),
                "{i:?}"
            );
        }
    }

    #[test]
    fn a_sealed_template_checks_and_an_unsealed_one_does_not() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("macos-26");
        write_template(&dir);
        let error = check(&dir).expect_err("still writable");
        assert!(error.to_string().contains("read-only"), "{error}");
        seal(&dir).expect("seal");
        let checked = check(&dir).expect("valid");
        assert_eq!(checked.metadata, info().metadata());
        assert_eq!(checked.hardware_model.as_bytes(), b"model");
        assert!(create_dir(&dir).is_err(), "never overwrites a template");

        // A clone of the read-only disk files is made writable for the VM.
        let bundle = root.path().join("r.bundle");
        std::fs::create_dir(&bundle).expect("bundle");
        for file in DISK_FILES {
            std::fs::copy(dir.join(file), bundle.join(file)).expect("copy");
            assert!(std::fs::metadata(bundle.join(file))
                .expect("m")
                .permissions()
                .readonly());
        }
        make_bundle_writable(&bundle).expect("writable");
        for file in DISK_FILES {
            assert!(!std::fs::metadata(bundle.join(file))
                .expect("m")
                .permissions()
                .readonly());
        }
    }

    #[test]
    fn check_names_what_is_wrong() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        write_template(&dir);
        std::fs::remove_file(dir.join(AUXILIARY_STORAGE_FILE)).expect("rm");
        seal_what_exists(&dir);
        let error = check(&dir).expect_err("aux missing").to_string();
        assert!(error.contains("AuxiliaryStorage cannot be read"), "{error}");
    }

    #[test]
    fn a_template_that_would_not_clone_its_hardware_model_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        write_template(&dir);
        let mut metadata = info().metadata();
        metadata.disk_files.truncate(2);
        fsutil::write_json_atomic(&dir.join(METADATA_FILE), &metadata).expect("rewrite");
        seal(&dir).expect("seal");
        let error = check(&dir).expect_err("old diskFiles").to_string();
        assert!(error.contains("HardwareModel.json"), "{error}");
    }

    #[test]
    fn options_default_when_absent_and_are_checked_when_present() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        write_template(&dir);
        seal(&dir).expect("seal");
        let checked = check(&dir).expect("no VzOptions.json is fine");
        assert_eq!(checked.options, VzOptions::default());
        assert_eq!(checked.options.display, Some(Display::default()));

        let dir = root.path().join("u");
        write_template(&dir);
        let options = VzOptions {
            machine_identity: MachineIdentityPolicy::Template,
            machine_identifier: Some(
                VzMachineIdentifier::from_bytes(b"ecid".to_vec()).expect("id"),
            ),
            display: None,
            disk_format: DiskFormat::Asif,
        };
        write_options(&dir, &options).expect("write");
        assert!(check(&dir).is_err(), "VzOptions.json must be sealed too");
        seal(&dir).expect("seal");
        assert_eq!(check(&dir).expect("valid").options, options);

        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(OPTIONS_FILE)).expect("read"))
                .expect("json");
        assert_eq!(json["machineIdentity"], "template");
        assert_eq!(json["diskFormat"], "asif");
        assert!(json["display"].is_null());
        let no_identifier = VzOptions {
            machine_identifier: None,
            ..options
        };
        assert!(write_options(&dir, &no_identifier).is_err());
    }

    fn seal_what_exists(dir: &Path) {
        for file in TEMPLATE_FILES {
            let _ = fsutil::make_read_only(&dir.join(file));
        }
    }
}
