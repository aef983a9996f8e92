//! Templates: read-only directories with a `TemplateMetadata.json`, validated at start and
//! never written by the agent.

use serde::{Deserialize, Serialize};
use shoes_vz_model::ids::validate_name;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const METADATA_FILE: &str = "TemplateMetadata.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    pub name: String,
    pub version: String,
    /// The backend that can boot it: `test`, `qemu` or `vz`.
    pub backend: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// GitHub's OS label of the guest (`Linux`, `macOS`); default from `backend`. Every
    /// runner of the template registers with it, so jobs may ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// GitHub's arch label of the guest (`X64`, `ARM64`); default from `backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub ssh_user: String,
    /// Files cloned into every runner bundle, relative to the template directory.
    pub disk_files: Vec<String>,
    pub limits: TemplateLimits,
    /// The shell that runs the setup script (its first word: a program name like `bash` or
    /// an absolute path; a trailing `-s` from older templates is ignored). The script runs
    /// detached as `<shell> <script file>`, as root through the runner-agent.
    #[serde(default = "default_setup_shell")]
    pub setup_shell: String,
    /// Direct Linux kernel boot (the `qemu` backend); absent for disk-booted guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_boot: Option<LinuxBoot>,
    /// A warm template: runners restore this saved VM state instead of booting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_state: Option<SavedState>,
    /// The guest runs `shoes-vz-runner-agent`: it gets a per-runner config disk (keys,
    /// token) and notifies the agent when up. Absent: the image carries its own keys (tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<GuestAgent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestAgent {
    /// The GitHub Actions runner's directory in the guest (absolute), watched for its state.
    /// myshoes installs the runner in `<RUNNER_BASE_DIRECTORY>/runner`, `/tmp/runner` by
    /// default (myshoes-setup-script.md M:125-126).
    #[serde(default = "default_runner_dir")]
    pub runner_dir: String,
}

/// Where myshoes' setup script puts the runner with its default RUNNER_BASE_DIRECTORY.
pub const MYSHOES_RUNNER_DIR: &str = "/tmp/runner";

fn default_runner_dir() -> String {
    MYSHOES_RUNNER_DIR.to_string()
}

/// A VM state saved from this template's disks, and the VM shape it needs back: a restore
/// must have the same vCPUs, memory and devices, or it boots cold instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedState {
    /// The state file, a plain file name in the template directory.
    pub file: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Whether a config disk was attached after the disks when it was saved.
    pub config_disk: bool,
    /// The guest's address when it was saved (a restored guest keeps it).
    pub guest_ip: String,
    /// File (mode 0600, in the template directory) holding the runner-agent token of the saved
    /// guest: it authorizes the `/refresh` that gives each restored clone its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_token_file: Option<String>,
    /// The saved guest's RAM (a plain file name in the template directory), when it was kept
    /// as a file: restores map it copy-on-write instead of loading it from the state file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_file: Option<String>,
}

/// A kernel (uncompressed `vmlinux`, booted through its PVH entry) and an initramfs, as
/// plain file names in the template directory. Shared read-only by every runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinuxBoot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Appended to the backend's own kernel command line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_args: String,
}

fn default_setup_shell() -> String {
    "bash".to_string()
}

impl TemplateMetadata {
    /// GitHub's OS label for the guest: `os`, else what the backend runs (vz: macOS guests;
    /// qemu: Linux; test: this host's OS, since its "guests" run on the host).
    pub fn os_label(&self) -> &str {
        if let Some(os) = &self.os {
            return os;
        }
        match self.backend.as_str() {
            "vz" => "macOS",
            "qemu" => "Linux",
            _ if cfg!(target_os = "macos") => "macOS",
            _ => "Linux",
        }
    }

    /// GitHub's arch label for the guest: `arch`, else the backend's (vz: Apple silicon;
    /// qemu: x86-64 guests; test: this host's).
    pub fn arch_label(&self) -> &str {
        if let Some(arch) = &self.arch {
            return arch;
        }
        match self.backend.as_str() {
            "vz" => "ARM64",
            "qemu" => "X64",
            _ if cfg!(target_arch = "aarch64") => "ARM64",
            _ => "X64",
        }
    }

    /// The program that runs the setup script: `setupShell`'s first word.
    pub fn setup_program(&self) -> &str {
        self.setup_shell.split_whitespace().next().unwrap_or("sh")
    }
}

/// A program name (`bash`) or an absolute path, with nothing a shell would interpret.
fn is_plain_program(program: &str) -> bool {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-+/".contains(&b);
    !program.is_empty()
        && program.bytes().all(plain)
        && !program.starts_with(['-', '.'])
        && (!program.contains('/') || (program.starts_with('/') && !program.contains("/../")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateLimits {
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
}

/// A validated template.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
    pub metadata: TemplateMetadata,
}

impl Template {
    pub fn disk_paths(&self) -> impl Iterator<Item = (&str, PathBuf)> {
        self.metadata
            .disk_files
            .iter()
            .map(|file| (file.as_str(), self.dir.join(file)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read templates directory {path}; create it or set templates_dir")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {dir}: cannot read {METADATA_FILE}")]
    ReadMetadata {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {dir}: {METADATA_FILE} is not valid")]
    ParseMetadata {
        dir: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("template {dir}: {problem}")]
    Invalid { dir: PathBuf, problem: String },
    #[error(
        "templates {first} and {second} are both named {name:?}; template names must be unique"
    )]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no template for backend {backend:?} in {dir}; build or import one first")]
    NoneForBackend { backend: String, dir: PathBuf },
}

/// Loads and validates one template directory.
pub fn load(dir: &Path) -> Result<Template, TemplateError> {
    let text =
        std::fs::read(dir.join(METADATA_FILE)).map_err(|source| TemplateError::ReadMetadata {
            dir: dir.to_path_buf(),
            source,
        })?;
    let metadata: TemplateMetadata =
        serde_json::from_slice(&text).map_err(|source| TemplateError::ParseMetadata {
            dir: dir.to_path_buf(),
            source,
        })?;
    let invalid = |problem: String| TemplateError::Invalid {
        dir: dir.to_path_buf(),
        problem,
    };
    validate_name("template name", &metadata.name, 64).map_err(|e| invalid(e.to_string()))?;
    validate_name("template version", &metadata.version, 64).map_err(|e| invalid(e.to_string()))?;
    validate_name("sshUser", &metadata.ssh_user, 32).map_err(|e| invalid(e.to_string()))?;
    if metadata.disk_files.is_empty() {
        return Err(invalid(
            "diskFiles is empty; list the disk images to clone".into(),
        ));
    }
    let boot_files = metadata.linux_boot.iter().flat_map(|boot| {
        std::iter::once(("kernel", &boot.kernel))
            .chain(boot.initrd.iter().map(|initrd| ("initrd", initrd)))
    });
    let disk_files = metadata.disk_files.iter().map(|file| ("disk file", file));
    let state_file = metadata.saved_state.iter().flat_map(|state| {
        std::iter::once(("saved state", &state.file))
            .chain(
                state
                    .guest_token_file
                    .iter()
                    .map(|file| ("guest token file", file)),
            )
            .chain(state.ram_file.iter().map(|file| ("saved RAM file", file)))
    });
    for (kind, file) in disk_files.chain(boot_files).chain(state_file) {
        // One plain component: a template can never make the agent read from outside itself.
        validate_name(kind, file, 128).map_err(|e| invalid(e.to_string()))?;
        let path = dir.join(file);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| invalid(format!("{kind} {file} cannot be read: {e}")))?;
        if !meta.file_type().is_file() {
            return Err(invalid(format!("{kind} {file} is not a regular file")));
        }
    }
    if metadata.limits.max_vcpus == 0 || metadata.limits.max_memory_mib == 0 {
        return Err(invalid(
            "limits.maxVcpus and limits.maxMemoryMib must be above zero".into(),
        ));
    }
    if let Some(state) = &metadata.saved_state {
        if metadata.linux_boot.is_none() || state.vcpus == 0 || state.memory_mib == 0 {
            return Err(invalid(
                "savedState needs linuxBoot and a vCPU count and memory above zero".into(),
            ));
        }
    }
    if metadata.setup_shell.trim().is_empty() || !is_plain_program(metadata.setup_program()) {
        return Err(invalid(format!(
            "setupShell {:?} must start with a shell's name (e.g. bash) or absolute path",
            metadata.setup_shell
        )));
    }
    if let Some(agent) = &metadata.guest_agent {
        if !agent.runner_dir.starts_with('/') {
            return Err(invalid(
                "guestAgent.runnerDir must be an absolute path".into(),
            ));
        }
    }
    Ok(Template {
        dir: dir.to_path_buf(),
        metadata,
    })
}

/// Loads every template under `root` for `backend`. Templates of other backends are skipped
/// (logged); an invalid template stops the agent, so a broken image is never served.
pub fn load_all(root: &Path, backend: &str) -> Result<BTreeMap<String, Template>, TemplateError> {
    let entries = std::fs::read_dir(root).map_err(|source| TemplateError::ReadDir {
        path: root.to_path_buf(),
        source,
    })?;
    let mut templates: BTreeMap<String, Template> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(METADATA_FILE).is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let template = load(&dir)?;
        if template.metadata.backend != backend {
            tracing::info!(template = %template.metadata.name, backend = %template.metadata.backend, "template is for another backend; skipped");
            continue;
        }
        if let Some(first) = templates.get(&template.metadata.name) {
            return Err(TemplateError::Duplicate {
                name: template.metadata.name.clone(),
                first: first.dir.clone(),
                second: dir,
            });
        }
        templates.insert(template.metadata.name.clone(), template);
    }
    if templates.is_empty() {
        return Err(TemplateError::NoneForBackend {
            backend: backend.to_string(),
            dir: root.to_path_buf(),
        });
    }
    Ok(templates)
}

/// Size of the test template's sparse disk: big enough to make clone cost visible, small
/// enough that full copies on a filesystem without reflink stay cheap.
pub const TEST_DISK_BYTES: u64 = 8 * 1024 * 1024;

/// Creates the embedded default template of the test backend (a small sparse "disk") if it
/// is missing. Used by `shoes-vz dev` and the tests.
pub fn ensure_test_template(root: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dir = root.join(name);
    if dir.join(METADATA_FILE).is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    let disk = std::fs::File::create(dir.join("Disk.img"))?;
    disk.set_len(TEST_DISK_BYTES)?;
    let metadata = TemplateMetadata {
        name: name.to_string(),
        os: None,
        arch: None,
        version: "1".to_string(),
        backend: "test".to_string(),
        labels: vec!["test".to_string(), "linux".to_string()],
        ssh_user: "runner".to_string(),
        disk_files: vec!["Disk.img".to_string()],
        limits: TemplateLimits {
            max_vcpus: 64,
            max_memory_mib: 1024 * 1024,
        },
        setup_shell: "sh".to_string(),
        linux_boot: None,
        saved_state: None,
        guest_agent: Some(GuestAgent {
            runner_dir: MYSHOES_RUNNER_DIR.to_string(),
        }),
    };
    crate::fsutil::write_json_atomic(&dir.join(METADATA_FILE), &metadata)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_metadata(dir: &Path, json: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(METADATA_FILE), json).expect("write");
    }

    #[test]
    fn default_test_template_loads_and_round_trips() {
        let root = tempfile::tempdir().expect("tempdir");
        ensure_test_template(root.path(), "test-default").expect("created");
        let all = load_all(root.path(), "test").expect("loads");
        let t = &all["test-default"];
        assert_eq!(t.metadata.disk_files, vec!["Disk.img"]);
        assert_eq!(t.disk_paths().count(), 1);
        assert!(matches!(
            load_all(root.path(), "qemu"),
            Err(TemplateError::NoneForBackend { .. })
        ));
    }

    #[test]
    fn disk_files_outside_the_template_or_missing_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("evil");
        for (files, needle) in [
            (r#"["../../etc/passwd"]"#, "disk file"),
            (r#"["Missing.img"]"#, "cannot be read"),
            (r#"[]"#, "diskFiles is empty"),
        ] {
            write_metadata(
                &dir,
                &format!(
                    r#"{{"name":"evil","version":"1","backend":"test","sshUser":"runner","diskFiles":{files},"limits":{{"maxVcpus":2,"maxMemoryMib":1024}}}}"#
                ),
            );
            let error = load(&dir).expect_err("refused").to_string();
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn linux_boot_files_are_validated_like_disk_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("guest");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for file in ["Disk.img", "vmlinux"] {
            std::fs::write(dir.join(file), b"x").expect("write");
        }
        let metadata = |boot: &str| {
            format!(
                r#"{{"name":"g","version":"1","backend":"qemu","sshUser":"runner","diskFiles":["Disk.img"],"limits":{{"maxVcpus":2,"maxMemoryMib":1024}},"linuxBoot":{boot}}}"#
            )
        };
        write_metadata(&dir, &metadata(r#"{"kernel":"vmlinux"}"#));
        let template = load(&dir).expect("valid");
        let boot = crate::hypervisor::LinuxBootFiles::from_template(&template).expect("boot");
        assert_eq!(boot.kernel, dir.join("vmlinux"));
        assert_eq!(boot.initrd, None);
        let with_state = |state: &str| {
            metadata(r#"{"kernel":"vmlinux"}"#).replace(
                r#""linuxBoot""#,
                &format!(r#""savedState":{state},"linuxBoot""#),
            )
        };
        write_metadata(
            &dir,
            &with_state(
                r#"{"file":"state.bin","vcpus":1,"memoryMib":256,"configDisk":false,"guestIp":"10.0.2.15"}"#,
            ),
        );
        let error = load(&dir).expect_err("missing state file").to_string();
        assert!(
            error.contains("saved state state.bin cannot be read"),
            "{error}"
        );
        std::fs::write(dir.join("state.bin"), b"s").expect("write");
        let warm = load(&dir).expect("warm template");
        assert_eq!(warm.metadata.saved_state.expect("state").memory_mib, 256);
        for (boot, needle) in [
            (
                r#"{"kernel":"vmlinux","initrd":"initrd.img"}"#,
                "initrd initrd.img cannot be read",
            ),
            (r#"{"kernel":"../vmlinux"}"#, "kernel"),
        ] {
            write_metadata(&dir, &metadata(boot));
            let error = load(&dir).expect_err("refused").to_string();
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn setup_shells_are_plain_programs_and_runner_dirs_default_to_myshoes() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("d"), b"x").expect("write");
        let with = |extra: &str| {
            format!(
                r#"{{"name":"t","version":"1","backend":"test","sshUser":"r","diskFiles":["d"],"limits":{{"maxVcpus":1,"maxMemoryMib":1}}{extra}}}"#
            )
        };
        write_metadata(&dir, &with(r#","guestAgent":{}"#));
        let template = load(&dir).expect("defaults");
        assert_eq!(template.metadata.setup_program(), "bash");
        let agent = template.metadata.guest_agent.expect("guest agent");
        assert_eq!(agent.runner_dir, "/tmp/runner");
        for (shell, program) in [("bash -s", "bash"), ("/bin/zsh", "/bin/zsh"), ("sh", "sh")] {
            write_metadata(&dir, &with(&format!(r#","setupShell":"{shell}""#)));
            assert_eq!(load(&dir).expect(shell).metadata.setup_program(), program);
        }
        for bad in ["", "bash;rm", "../sh", "-sh", "sh$(x)", "a/b"] {
            write_metadata(&dir, &with(&format!(r#","setupShell":"{bad}""#)));
            let error = load(&dir).expect_err(bad).to_string();
            assert!(error.contains("setupShell"), "{bad}: {error}");
        }
    }

    #[test]
    fn unknown_fields_and_duplicate_names_are_errors() {
        let root = tempfile::tempdir().expect("tempdir");
        write_metadata(
            &root.path().join("a"),
            r#"{"name":"a","version":"1","backend":"test","sshUser":"r","diskFiles":["d"],"limits":{"maxVcpus":1,"maxMemoryMib":1},"extra":1}"#,
        );
        assert!(matches!(
            load(&root.path().join("a")),
            Err(TemplateError::ParseMetadata { .. })
        ));
        ensure_test_template(root.path(), "one").expect("one");
        std::fs::remove_dir_all(root.path().join("a")).expect("rm");
        let copy = root.path().join("two");
        std::fs::create_dir_all(&copy).expect("mkdir");
        for f in [METADATA_FILE, "Disk.img"] {
            std::fs::copy(root.path().join("one").join(f), copy.join(f)).expect("copy");
        }
        assert!(matches!(
            load_all(root.path(), "test"),
            Err(TemplateError::Duplicate { .. })
        ));
    }
}
