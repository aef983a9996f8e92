//! `import_tart` end to end on the committed fixture (tart's real on-disk format).

use shoes_vz_vz::disk_format::DiskFormat;
use shoes_vz_vz::hardware;
use shoes_vz_vz::identity::MachineIdentityPolicy;
use shoes_vz_vz::tart::{self, TartError, TartImportOptions};
use shoes_vz_vz::template::{self, TemplateLimits};
use shoes_vz_vz::version::MacosVersion;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tart-vm")
}

fn copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::copy(src, dst).map(|_| ())
}

fn options() -> TartImportOptions {
    TartImportOptions::new("macos-26", "1", vec!["macos".into(), "arm64".into()])
}

#[test]
fn imports_a_sealed_template_the_agent_can_load() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("macos-26");
    let imported = tart::import_tart(&fixture(), &dir, &options(), &copy).expect("import");
    assert_eq!(imported.dir, dir);

    assert_eq!(
        std::fs::read(dir.join("Disk.img")).expect("disk"),
        std::fs::read(fixture().join("disk.img")).expect("fixture disk")
    );
    assert_eq!(
        std::fs::read(dir.join("AuxiliaryStorage")).expect("aux"),
        std::fs::read(fixture().join("nvram.bin")).expect("fixture nvram")
    );
    let vm = tart::read_vm(&fixture()).expect("fixture");
    assert_eq!(
        hardware::read_hardware_model(&dir).expect("model"),
        vm.hardware_model
    );

    let checked = template::check(&dir).expect("sealed, complete template");
    assert_eq!(checked.metadata.backend, "vz");
    assert_eq!(checked.metadata.ssh_user, "admin");
    assert_eq!(
        checked.metadata.disk_files,
        ["Disk.img", "AuxiliaryStorage", "HardwareModel.json"]
    );
    assert_eq!(
        checked
            .metadata
            .guest_agent
            .as_ref()
            .map(|a| a.runner_dir.as_str()),
        Some("/tmp/runner")
    );
    // Limits default to the tart VM's own size (4 CPUs, 8 GiB).
    assert_eq!(
        checked.metadata.limits,
        TemplateLimits {
            max_vcpus: 4,
            max_memory_mib: 8192
        }
    );
    for file in template::TEMPLATE_FILES {
        assert!(
            std::fs::metadata(dir.join(file))
                .expect("meta")
                .permissions()
                .readonly(),
            "{file} is writable"
        );
    }
    // By default (per-runner identity) tart's own machine identifier is not carried over.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), template::TEMPLATE_FILES.len() + 1, "{names:?}");
    assert!(names.iter().any(|n| n == template::OPTIONS_FILE));
    assert_eq!(
        checked.options.machine_identity,
        MachineIdentityPolicy::PerRunner
    );
    assert_eq!(checked.options.machine_identifier, None);
    assert_eq!(checked.options.disk_format, DiskFormat::Raw);
}

#[test]
fn template_identity_keeps_tarts_ecid() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("t");
    let mut options = options();
    options.machine_identity = MachineIdentityPolicy::Template;
    tart::import_tart(&fixture(), &dir, &options, &copy).expect("import");
    let checked = template::check(&dir).expect("sealed");
    let vm = tart::read_vm(&fixture()).expect("fixture");
    assert_eq!(
        checked.options.machine_identity,
        MachineIdentityPolicy::Template
    );
    assert_eq!(
        checked.options.machine_identifier,
        Some(vm.machine_identifier)
    );
}

#[test]
fn an_asif_disk_is_refused_below_macos_26_and_kept_otherwise() {
    let root = tempfile::tempdir().expect("tempdir");
    let vm = root.path().join("vm");
    std::fs::create_dir(&vm).expect("mkdir");
    for file in ["disk.img", "nvram.bin"] {
        std::fs::copy(fixture().join(file), vm.join(file)).expect("copy");
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("config.json")).expect("read"))
            .expect("json");
    config["diskFormat"] = serde_json::json!("asif");
    std::fs::write(
        vm.join("config.json"),
        serde_json::to_vec(&config).expect("json"),
    )
    .expect("write");

    let mut options = options();
    options.host_macos = Some(MacosVersion::new(15, 5, 0));
    let dir = root.path().join("t");
    let error = tart::import_tart(&vm, &dir, &options, &copy).expect_err("ASIF on macOS 15");
    assert!(matches!(error, TartError::DiskFormat { .. }), "{error}");
    let chain = format!(
        "{error}: {}",
        std::error::Error::source(&error).expect("cause")
    );
    assert!(chain.contains("macOS 26.0.0"), "{chain}");
    assert!(!dir.exists(), "nothing written");

    options.host_macos = Some(MacosVersion::new(26, 1, 0));
    tart::import_tart(&vm, &dir, &options, &copy).expect("ASIF on macOS 26");
    assert_eq!(
        template::check(&dir).expect("sealed").options.disk_format,
        DiskFormat::Asif
    );
}

#[test]
fn never_overwrites_and_cleans_up_after_a_failed_clone() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("t");
    std::fs::create_dir(&dir).expect("existing");
    let error = tart::import_tart(&fixture(), &dir, &options(), &copy).expect_err("exists");
    assert!(error.to_string().contains("must not exist"), "{error}");
    std::fs::remove_dir(&dir).expect("rmdir");

    let failing = |_: &Path, _: &Path| -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    };
    let error = tart::import_tart(&fixture(), &dir, &options(), &failing).expect_err("clone fails");
    assert!(matches!(error, TartError::Clone { .. }), "{error}");
    assert!(!dir.exists(), "half-built template left behind");
}

#[test]
fn a_suspended_tart_vm_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let vm = root.path().join("vm");
    std::fs::create_dir(&vm).expect("mkdir");
    for file in ["config.json", "disk.img", "nvram.bin"] {
        std::fs::copy(fixture().join(file), vm.join(file)).expect("copy");
    }
    std::fs::write(vm.join("state.vzvmsave"), b"saved").expect("state");
    let error =
        tart::import_tart(&vm, &root.path().join("t"), &options(), &copy).expect_err("suspended");
    assert!(matches!(error, TartError::Suspended { .. }), "{error}");
    std::fs::remove_file(vm.join("nvram.bin")).expect("rm");
    std::fs::remove_file(vm.join("state.vzvmsave")).expect("rm");
    let error = tart::read_vm(&vm).expect_err("nvram missing").to_string();
    assert!(error.contains("nvram.bin"), "{error}");
}

#[test]
fn reflink_clone_never_falls_back_to_a_copy() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("t");
    // The fixture lives in the source tree, maybe on another filesystem: stage it next to the
    // destination so only reflink support decides.
    let staged = root.path().join("vm");
    std::fs::create_dir(&staged).expect("mkdir");
    for file in ["config.json", "disk.img", "nvram.bin"] {
        std::fs::copy(fixture().join(file), staged.join(file)).expect("copy");
    }
    match tart::import_tart(&staged, &dir, &options(), &tart::reflink_clone) {
        Ok(_) => template::check(&dir)
            .map(|_| ())
            .expect("reflinked template"),
        Err(TartError::Clone { source, .. }) => {
            eprintln!(
                "NOTE: {} has no reflink support ({source}); checked the refusal path",
                root.path().display()
            );
            assert!(!dir.exists());
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// Needs a real reflink filesystem: `.ci/reflink-fs.sh` mounts one and CI exports its path.
#[test]
fn imports_copy_on_write_on_a_real_reflink_filesystem() {
    let Some(root) = std::env::var_os("SHOESVZ_TEST_REFLINK_DIR") else {
        shoes_vz_test_support::prerequisite_missing(
            "reflink import test",
            "set SHOESVZ_TEST_REFLINK_DIR to a dir on XFS/btrfs/APFS (run .ci/reflink-fs.sh as root)",
        );
        return;
    };
    let root = tempfile::tempdir_in(root).expect("tempdir on the reflink fs");
    let staged = root.path().join("vm");
    std::fs::create_dir(&staged).expect("mkdir");
    for file in ["config.json", "nvram.bin"] {
        std::fs::copy(fixture().join(file), staged.join(file)).expect("copy");
    }
    // Real data, so there are extents to share.
    std::fs::write(staged.join("disk.img"), vec![7u8; 1024 * 1024]).expect("disk");
    let dir = root.path().join("t");
    tart::import_tart(&staged, &dir, &options(), &tart::reflink_clone)
        .expect("reflink clone works here");
    template::check(&dir).expect("sealed template");
    assert_eq!(
        std::fs::read(dir.join("Disk.img")).expect("clone"),
        std::fs::read(staged.join("disk.img")).expect("source")
    );
}
