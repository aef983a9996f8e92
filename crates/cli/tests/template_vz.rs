//! `shoes-vz template import-tart` and `template create` through the real binary, against the
//! tart fixture of crates/vz; the agent's template loader must accept what import writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vz/tests/fixtures/tart-vm")
}

/// The fixture copied to `dir`, so the clone's source and destination share a filesystem.
fn stage_fixture(dir: &Path) -> PathBuf {
    let vm = dir.join("tart-vm");
    std::fs::create_dir(&vm).expect("mkdir");
    for file in ["config.json", "disk.img", "nvram.bin"] {
        std::fs::copy(fixture().join(file), vm.join(file)).expect("stage fixture");
    }
    vm
}

fn shoes_vz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoes-vz"))
        .args(args)
        .env_remove("SHOESVZ_TEMPLATES_DIR")
        .output()
        .expect("run shoes-vz")
}

fn import(vm: &Path, templates: &Path) -> Output {
    shoes_vz(&[
        "template",
        "import-tart",
        vm.to_str().expect("utf-8"),
        "--name",
        "macos-test",
        "--version",
        "2",
        "--label",
        "macos",
        "--label",
        "arm64",
        "--max-vcpus",
        "2",
        "--templates-dir",
        templates.to_str().expect("utf-8"),
    ])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Needs a real reflink filesystem: `.ci/reflink-fs.sh` mounts one and CI exports its path.
#[test]
fn import_tart_makes_a_template_the_agent_loads() {
    let Some(root) = std::env::var_os("SHOESVZ_TEST_REFLINK_DIR") else {
        shoes_vz_test_support::prerequisite_missing(
            "import-tart CLI test",
            "set SHOESVZ_TEST_REFLINK_DIR to a dir on XFS/btrfs/APFS (run .ci/reflink-fs.sh as root)",
        );
        return;
    };
    let root = tempfile::tempdir_in(root).expect("tempdir on the reflink fs");
    let vm = stage_fixture(root.path());
    let templates = root.path().join("templates");

    let output = import(&vm, &templates);
    assert!(
        output.status.success(),
        "import failed:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let dir = templates.join("macos-test-2");
    assert!(
        text(&output.stdout).contains(&dir.display().to_string()),
        "{}",
        text(&output.stdout)
    );

    let template = shoes_vz_agent::template::load(&dir).expect("the agent loads it");
    let metadata = &template.metadata;
    assert_eq!(
        (metadata.name.as_str(), metadata.version.as_str()),
        ("macos-test", "2")
    );
    assert_eq!(metadata.backend, "vz");
    assert_eq!(metadata.labels, ["macos", "arm64"]);
    assert_eq!(metadata.ssh_user, "admin");
    assert_eq!(
        metadata.disk_files,
        ["Disk.img", "AuxiliaryStorage", "HardwareModel.json"]
    );
    assert_eq!(metadata.limits.max_vcpus, 2, "--max-vcpus");
    assert_eq!(metadata.limits.max_memory_mib, 8192, "the tart VM's own");
    assert_eq!(
        metadata.guest_agent.as_ref().map(|a| a.runner_dir.as_str()),
        Some("/tmp/runner")
    );
    let all = shoes_vz_agent::template::load_all(&templates, "vz").expect("load_all");
    assert_eq!(all.len(), 1);
    shoes_vz_vz::template::check(&dir).expect("sealed, complete vz template");
    assert_eq!(
        std::fs::read(dir.join("Disk.img")).expect("disk"),
        std::fs::read(vm.join("disk.img")).expect("source disk")
    );

    let again = import(&vm, &templates);
    assert!(!again.status.success(), "a template was overwritten");
    assert!(
        text(&again.stderr).contains("must not exist"),
        "{}",
        text(&again.stderr)
    );
}

/// `--output json`: the imported template as one JSON object on stdout, nothing else there.
#[test]
fn import_tart_prints_its_result_as_json() {
    let Some(root) = std::env::var_os("SHOESVZ_TEST_REFLINK_DIR") else {
        shoes_vz_test_support::prerequisite_missing(
            "import-tart --output json",
            "set SHOESVZ_TEST_REFLINK_DIR to a dir on XFS/btrfs/APFS (run .ci/reflink-fs.sh as root)",
        );
        return;
    };
    let root = tempfile::tempdir_in(root).expect("tempdir on the reflink fs");
    let vm = stage_fixture(root.path());
    let templates = root.path().join("templates");
    let output = shoes_vz(&[
        "template",
        "import-tart",
        vm.to_str().expect("utf-8"),
        "--name",
        "macos-json",
        "--templates-dir",
        templates.to_str().expect("utf-8"),
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let imported: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    for key in [
        "source",
        "name",
        "version",
        "dir",
        "machine_identity",
        "disk_format",
        "hardware_model_supported",
    ] {
        assert!(imported.get(key).is_some(), "no {key:?} in {imported:#}");
    }
    assert_eq!(imported["name"], "macos-json");
    assert_eq!(imported["version"], "1");
    assert_eq!(
        imported["dir"],
        templates.join("macos-json-1").to_str().expect("utf-8")
    );
    assert_eq!(imported["machine_identity"], "per-runner");
    if cfg!(not(target_os = "macos")) {
        assert!(imported["hardware_model_supported"].is_null(), "{imported}");
    }
}

/// Without reflink support the import fails with what to do, and leaves nothing behind.
#[test]
fn import_tart_never_falls_back_to_a_copy() {
    // The temp dir may support reflink (XFS on some hosts); tmpfs never does, so CI runs this.
    let Some(root) = [std::env::temp_dir(), "/dev/shm".into()]
        .into_iter()
        .filter_map(|dir| tempfile::tempdir_in(dir).ok())
        .find(|root| !shoes_vz_agent::bundle::reflink_supported(root.path()))
    else {
        shoes_vz_test_support::prerequisite_missing(
            "the refusal path of import-tart; the temp dir and /dev/shm support reflink",
            "run on a filesystem without it, e.g. ext4 or tmpfs (set TMPDIR)",
        );
        return;
    };
    let vm = stage_fixture(root.path());
    let templates = root.path().join("templates");
    let output = import(&vm, &templates);
    assert!(!output.status.success(), "imported without reflink");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("copy-on-write"), "{stderr}");
    assert!(stderr.contains("never falls back"), "{stderr}");
    assert!(
        !templates.join("macos-test-2").exists(),
        "half-built template"
    );
}

#[test]
fn import_tart_refuses_a_bad_name_before_touching_anything() {
    let root = tempfile::tempdir().expect("tempdir");
    let vm = stage_fixture(root.path());
    let templates = root.path().join("templates");
    let output = shoes_vz(&[
        "template",
        "import-tart",
        vm.to_str().expect("utf-8"),
        "--name",
        "../evil",
        "--templates-dir",
        templates.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("template name"),
        "{}",
        text(&output.stderr)
    );
    assert!(!templates.exists(), "created {}", templates.display());
}

#[cfg(not(target_os = "macos"))]
#[test]
fn create_from_an_ipsw_is_unsupported_off_macos() {
    let root = tempfile::tempdir().expect("tempdir");
    let ipsw = root.path().join("UniversalMac.ipsw");
    std::fs::write(&ipsw, b"not really").expect("ipsw");
    let output = shoes_vz(&[
        "template",
        "create",
        "--ipsw",
        ipsw.to_str().expect("utf-8"),
        "--name",
        "macos-26",
        "--templates-dir",
        root.path().join("templates").to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("exists only on macOS"),
        "not a clear Unsupported: {stderr}"
    );
    assert!(!root.path().join("templates").exists());
}
