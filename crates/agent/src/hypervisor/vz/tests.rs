use super::*;
use crate::bundle::MachineIdentifier;
use crate::config::AgentConfig;
use shoes_vz_vz::errors::{framework_error, FrameworkError};
use shoes_vz_vz::hardware::VzMachineIdentifier;
use shoes_vz_vz::limits::{FrameworkLimits, HostResources};
use shoes_vz_vz::template::{self as vz_template, TemplateInfo, TemplateLimits};
use shoes_vz_vz::version::MacosVersion;
use std::sync::Arc;

fn limits(cpus: u32, memory_gib: u64) -> Limits {
    Limits {
        framework: FrameworkLimits {
            min_cpus: 1,
            max_cpus: 64,
            min_memory_bytes: 128 * MIB,
            max_memory_bytes: 1024 * 1024 * MIB,
        },
        host: HostResources {
            cpus,
            memory_bytes: memory_gib * 1024 * MIB,
        },
        reserve: host_reserve(&VzConfig::default()),
    }
}

fn spec(bundle_dir: &Path, ecid: u64) -> VmSpec {
    let client = crate::ssh::generate_ed25519().expect("client key");
    let host = crate::ssh::generate_ed25519().expect("host key");
    VmSpec {
        runner_id: RunnerId::generate(),
        bundle_dir: bundle_dir.to_path_buf(),
        disk_files: vz_template::CLONED_FILES
            .iter()
            .map(|f| bundle_dir.join(f))
            .collect(),
        vcpus: 64,
        memory_mib: 64 * 1024,
        machine_identifier: MachineIdentifier { ecid },
        ssh_user: "admin".into(),
        authorized_key: client.public_key().clone(),
        guest_host_key: Arc::new(host),
        linux_boot: None,
        config_disk: Some(bundle_dir.join("config.img")),
        restore: None,
    }
}

fn info() -> TemplateInfo {
    TemplateInfo {
        name: "macos-26".into(),
        version: "1".into(),
        labels: vec!["macos".into()],
        ssh_user: "admin".into(),
        limits: TemplateLimits {
            max_vcpus: 4,
            max_memory_mib: 8192,
        },
        setup_shell: "bash -s".into(),
        guest_agent: Some(vz_template::GuestAgent {
            runner_dir: vz_template::default_runner_dir(),
        }),
    }
}

/// A sealed vz template as `import-tart` writes it (without the framework).
fn write_vz_template(dir: &Path) {
    vz_template::create_dir(dir).expect("create");
    std::fs::write(dir.join(plan::DISK_FILE), b"disk").expect("disk");
    std::fs::write(dir.join(plan::AUXILIARY_STORAGE_FILE), b"aux").expect("aux");
    let model = HardwareModel::from_bytes(b"model".to_vec()).expect("model");
    shoes_vz_vz::hardware::write_hardware_model(dir, &model).expect("model file");
    vz_template::write_metadata(dir, &info()).expect("metadata");
    vz_template::seal(dir).expect("seal");
}

#[test]
fn the_vz_section_parses_with_documented_defaults() {
    let config: AgentConfig = toml::from_str(
        r#"
        backend = "vz"
        [vz]
        reserve_cpus = 2
        disk_sync = "none"
        lease_poll_interval = "500ms"
        "#,
    )
    .expect("valid");
    assert_eq!(config.backend, crate::config::BackendKind::Vz);
    assert_eq!(config.backend.as_str(), "vz");
    assert_eq!(config.vz.reserve_cpus, 2);
    assert_eq!(config.vz.reserve_memory_mib, 2048);
    assert_eq!(config.vz.disk_sync, VzDiskSync::None);
    assert_eq!(config.vz.lease_poll_interval, Duration::from_millis(500));
    assert_eq!(config.vz.dhcp_leases, Path::new("/var/db/dhcpd_leases"));
    assert!(!config.vz.warm_slots);
    check_config(&config.vz).expect("defaults are valid");
    assert!(toml::from_str::<AgentConfig>("[vz]\nreserve_cpu = 1").is_err());
    assert_eq!(disk_sync(VzDiskSync::Fsync), DiskSync::Fsync);
    let reserve = host_reserve(&config.vz);
    assert_eq!((reserve.cpus, reserve.memory_bytes), (2, 2048 * MIB));
}

#[test]
fn warm_slots_are_accepted_and_a_zero_start_timeout_is_refused() {
    let warm = VzConfig {
        warm_slots: true,
        ..VzConfig::default()
    };
    check_config(&warm).expect("warm slots are wired in (gated on macOS 14 at start)");
    let zero = VzConfig {
        start_timeout: Duration::ZERO,
        ..VzConfig::default()
    };
    assert!(check_config(&zero).is_err());
}

#[test]
fn capacity_is_capped_at_two() {
    let mut capacity = Capacity {
        max_runners: 8,
        ..Capacity::default()
    };
    cap_capacity(&mut capacity);
    assert_eq!(capacity.max_runners, 2);
    capacity.max_runners = 1;
    cap_capacity(&mut capacity);
    assert_eq!(capacity.max_runners, 1);
}

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn an_agent_with_the_vz_backend_is_a_typed_unsupported_off_macos() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = AgentConfig {
        backend: crate::config::BackendKind::Vz,
        token: Some("t".into()),
        data_dir: root.path().to_path_buf(),
        templates_dir: root.path().join("templates"),
        runners_dir: root.path().join("runners"),
        ..AgentConfig::default()
    };
    let Err(error) = crate::RunningAgent::start(config).await else {
        panic!("the vz backend started off macOS");
    };
    let typed = error
        .downcast_ref::<HypervisorError>()
        .expect("a HypervisorError");
    assert!(
        matches!(typed, HypervisorError::Unsupported { backend: "vz", .. }),
        "{typed}"
    );
    assert!(
        typed
            .to_string()
            .contains("the vz backend needs macOS on Apple Silicon; use qemu or test here"),
        "{typed}"
    );
    assert!(!root.path().join("runners").exists(), "nothing was set up");
}

#[test]
fn the_two_vm_limit_reads_as_what_to_do() {
    let limit = framework_error(
        "start the VM",
        FrameworkError {
            in_vz_domain: true,
            domain: "VZErrorDomain".into(),
            code: shoes_vz_vz::errors::codes::VIRTUAL_MACHINE_LIMIT_EXCEEDED,
            description: "The maximum number of VMs was exceeded.".into(),
        },
    );
    let runner = RunnerId::generate();
    let error = runner_error(&runner, limit);
    assert!(matches!(error, HypervisorError::Failed { .. }), "{error}");
    let message = crate::error_chain(&error);
    assert!(message.contains(runner.as_str()), "{message}");
    assert!(message.contains("at most 2 macOS VMs"), "{message}");
    assert!(message.contains("max_runners"), "{message}");

    let host = host_error(shoes_vz_vz::errors::unsupported_off_macos("probe the host"));
    assert!(
        matches!(host, HypervisorError::Unsupported { .. }),
        "{host}"
    );
}

#[test]
fn a_bundle_is_made_writable_and_its_hardware_model_read() {
    let root = tempfile::tempdir().expect("tempdir");
    let template = root.path().join("macos-26");
    write_vz_template(&template);
    let bundle = root.path().join("r.bundle");
    std::fs::create_dir(&bundle).expect("bundle");
    for file in vz_template::CLONED_FILES {
        // `std::fs::copy` keeps the mode, as an APFS clone does.
        std::fs::copy(template.join(file), bundle.join(file)).expect("clone");
    }
    let model = prepare_bundle(&bundle).expect("prepared");
    assert_eq!(model.as_bytes(), b"model");
    for file in vz_template::DISK_FILES {
        let meta = std::fs::metadata(bundle.join(file)).expect("meta");
        assert!(!meta.permissions().readonly(), "{file} still read-only");
    }

    std::fs::remove_file(bundle.join(shoes_vz_vz::hardware::HARDWARE_MODEL_FILE)).expect("rm");
    let error = prepare_bundle(&bundle).expect_err("no hardware model");
    assert!(
        crate::error_chain(&error).contains("HardwareModel.json"),
        "{error}"
    );
}

#[test]
fn the_plan_uses_the_bundle_identity_config_disk_and_clamps_sizes() {
    let bundle = Path::new("/opt/myshoes/vz/runners/r.bundle");
    let spec = spec(bundle, 0xfeed);
    let identity = MachineIdentifierFile {
        ecid: 0xfeed,
        vz_machine_identifier: Some(
            VzMachineIdentifier::from_bytes(b"ident".to_vec()).expect("ident"),
        ),
    };
    let model = HardwareModel::from_bytes(b"model".to_vec()).expect("model");
    let config = VzConfig {
        disk_sync: VzDiskSync::None,
        ..VzConfig::default()
    };
    let host = HostContext {
        limits: limits(10, 32),
        macos: MacosVersion::new(26, 0, 0),
    };
    let options = VzOptions::default();
    let plan = plan_for(&spec, &identity, model.clone(), &host, &config, &options).expect("plan");
    assert_eq!(plan.cpu_count, 9, "one core stays with the host");
    assert_eq!(
        plan.memory_bytes,
        30 * 1024 * MIB,
        "2 GiB stay with the host"
    );
    assert_eq!(plan.adjustments.len(), 2);
    assert_eq!(plan.boot_disk, bundle.join("Disk.img"));
    assert_eq!(plan.auxiliary_storage, bundle.join("AuxiliaryStorage"));
    assert_eq!(
        plan.config_disk.as_deref(),
        Some(&*bundle.join("config.img"))
    );
    assert_eq!(plan.mac(), MacAddress::derive(0xfeed));
    assert_eq!(plan.disk_sync, DiskSync::None);
    let display = plan
        .devices
        .display
        .expect("runners get a display by default");
    assert_eq!((display.width_px, display.height_px), (1920, 1080));
    assert_eq!(
        plan.devices.keyboard,
        Some(shoes_vz_vz::devices::Keyboard::Mac)
    );
    assert_eq!(
        plan.devices.pointer,
        Some(shoes_vz_vz::devices::Pointer::MacTrackpad)
    );
    assert!(plan.devices.vsock && !plan.devices.entropy);
    let headless = VzOptions {
        display: None,
        ..VzOptions::default()
    };
    let plan = plan_for(&spec, &identity, model.clone(), &host, &config, &headless)
        .expect("headless template");
    assert_eq!(plan.devices.display, None, "the template's choice");

    let agent_only = MachineIdentifierFile {
        ecid: 0xfeed,
        vz_machine_identifier: None,
    };
    let error = plan_for(&spec, &agent_only, model, &host, &config, &options)
        .expect_err("no framework identifier");
    assert!(
        crate::error_chain(&error).contains("vzMachineIdentifier"),
        "{error}"
    );
}

fn lease_block(ip: &str, mac: MacAddress) -> String {
    format!(
        // Far in the future: expired leases never count.
        "{{\n\tname=mac\n\tip_address={ip}\n\thw_address=1,{}\n\tlease=0xfffffff0\n}}\n",
        mac.to_bootpd_string()
    )
}

#[tokio::test]
async fn the_guest_address_comes_from_its_lease_once_written() {
    let root = tempfile::tempdir().expect("tempdir");
    let leases = root.path().join("dhcpd_leases");
    let mac = MacAddress::derive(42);
    std::fs::write(&leases, lease_block("192.168.64.9", MacAddress::derive(1))).expect("other");
    let (_status_tx, status) = watch::channel(VmStatus::Running);
    let writer = {
        let leases = leases.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let text = lease_block("192.168.64.9", MacAddress::derive(1))
                + &lease_block("192.168.64.7", mac);
            std::fs::write(&leases, text).expect("lease");
        })
    };
    let ip = wait_for_lease(
        &RunnerId::generate(),
        &leases,
        mac,
        Duration::from_secs(30),
        Duration::from_millis(100),
        None,
        status,
    )
    .await
    .expect("leased");
    assert_eq!(ip, Ipv4Addr::new(192, 168, 64, 7));
    writer.await.expect("writer");
}

#[tokio::test]
async fn a_restored_vm_waits_for_a_lease_renewed_after_its_restore() {
    let root = tempfile::tempdir().expect("tempdir");
    let leases = root.path().join("dhcpd_leases");
    let mac = MacAddress::derive(42);
    // The slot's lease from warming: still valid, but from before the restore.
    let old = lease_block("192.168.64.5", mac);
    std::fs::write(&leases, &old).expect("old lease");
    let before = shoes_vz_vz::leases::read(&leases).expect("read");
    let baseline = shoes_vz_vz::leases::baseline(&before, mac);
    let (_status_tx, status) = watch::channel(VmStatus::Running);
    let error = wait_for_lease(
        &RunnerId::generate(),
        &leases,
        mac,
        Duration::from_millis(300),
        Duration::from_millis(100),
        Some(baseline),
        status.clone(),
    )
    .await
    .expect_err("the pre-restore lease is not taken");
    assert!(matches!(error, HypervisorError::Timeout { .. }), "{error}");
    // bootpd renews it after the restore: a later expiry.
    let renewed = format!(
        "{old}{{\n\tip_address=192.168.64.8\n\thw_address=1,{}\n\tlease=0xfffffff8\n}}\n",
        mac.to_bootpd_string()
    );
    std::fs::write(&leases, renewed).expect("renewed");
    let ip = wait_for_lease(
        &RunnerId::generate(),
        &leases,
        mac,
        Duration::from_secs(10),
        Duration::from_millis(100),
        Some(baseline),
        status,
    )
    .await
    .expect("renewed lease");
    assert_eq!(ip, Ipv4Addr::new(192, 168, 64, 8));
}

#[tokio::test]
async fn no_lease_times_out_and_a_stopped_vm_ends_the_wait() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("dhcpd_leases");
    let (_status_tx, status) = watch::channel(VmStatus::Running);
    let error = wait_for_lease(
        &RunnerId::generate(),
        &missing,
        MacAddress::derive(1),
        Duration::from_millis(200),
        Duration::from_millis(100),
        None,
        status,
    )
    .await
    .expect_err("no lease");
    assert!(matches!(error, HypervisorError::Timeout { .. }), "{error}");

    let (status_tx, status) = watch::channel(VmStatus::Running);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status_tx.send_replace(VmStatus::GuestStopped);
        // Keep the sender until the waiter has seen the change.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let error = wait_for_lease(
        &RunnerId::generate(),
        &missing,
        MacAddress::derive(1),
        Duration::from_secs(60),
        Duration::from_secs(30),
        None,
        status,
    )
    .await
    .expect_err("the VM stopped");
    assert!(
        matches!(&error, HypervisorError::Exited { detail, .. } if detail.contains("guest shut down")),
        "{error}"
    );
    stopper.abort();
}

#[tokio::test]
async fn only_unexpected_stops_are_reported_as_exits() {
    let (events, mut received) = broadcast::channel(8);
    let runner = RunnerId::generate();

    let (status_tx, status) = watch::channel(VmStatus::Running);
    let watcher = tokio::spawn(watch_exit(runner.clone(), status, events.clone()));
    status_tx.send_replace(VmStatus::StoppedWithError(
        "VZErrorDomain (Internal): boom".into(),
    ));
    watcher.await.expect("watcher ends");
    assert_eq!(
        received.recv().await.expect("event"),
        VmEvent::Exited {
            runner_id: runner.clone(),
            detail: "the VM stopped on an error: VZErrorDomain (Internal): boom".into(),
        }
    );

    let (status_tx, status) = watch::channel(VmStatus::Running);
    let watcher = tokio::spawn(watch_exit(runner.clone(), status, events.clone()));
    status_tx.send_replace(VmStatus::StoppedByHost);
    watcher.await.expect("watcher ends");

    let (status_tx, status) = watch::channel(VmStatus::Running);
    let watcher = tokio::spawn(watch_exit(runner.clone(), status, events));
    drop(status_tx);
    watcher.await.expect("watcher ends with the VM handle");
    assert!(
        received.try_recv().is_err(),
        "a stop the agent asked for was reported"
    );
}

#[test]
fn an_asif_template_is_refused_on_a_host_below_macos_26() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("macos-26");
    vz_template::create_dir(&dir).expect("create");
    std::fs::write(dir.join(plan::DISK_FILE), b"disk").expect("disk");
    std::fs::write(dir.join(plan::AUXILIARY_STORAGE_FILE), b"aux").expect("aux");
    let model = HardwareModel::from_bytes(b"model".to_vec()).expect("model");
    shoes_vz_vz::hardware::write_hardware_model(&dir, &model).expect("model file");
    vz_template::write_metadata(&dir, &info()).expect("metadata");
    vz_template::write_options(
        &dir,
        &VzOptions {
            disk_format: shoes_vz_vz::disk_format::DiskFormat::Asif,
            ..VzOptions::default()
        },
    )
    .expect("options");
    vz_template::seal(&dir).expect("seal");
    let checked = check_templates(root.path()).expect("valid files");
    let error =
        check_template_on_host(&checked[0], MacosVersion::new(15, 6, 0)).expect_err("ASIF on 15");
    let message = error.to_string();
    assert!(
        message.contains("macos-26") && message.contains("ASIF"),
        "{message}"
    );
    check_template_on_host(&checked[0], MacosVersion::new(26, 0, 0)).expect("ASIF on 26");
}

#[test]
fn vz_templates_are_checked_and_others_skipped() {
    let root = tempfile::tempdir().expect("tempdir");
    let templates = root.path().join("templates");
    write_vz_template(&templates.join("macos-26"));
    crate::template::ensure_test_template(&templates, "test-default").expect("test template");

    let checked = check_templates(&templates).expect("valid");
    assert_eq!(checked.len(), 1);
    assert_eq!(checked[0].metadata.name, "macos-26");
    // The agent's own loader serves the same template to the vz backend.
    let loaded = crate::template::load_all(&templates, BACKEND).expect("agent loads it");
    assert_eq!(
        loaded["macos-26"].metadata.disk_files,
        vz_template::CLONED_FILES
    );
    assert!(check_templates(&root.path().join("missing"))
        .expect("left to the loader")
        .is_empty());

    let disk = templates.join("macos-26").join(plan::DISK_FILE);
    let mut permissions = std::fs::metadata(&disk).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&disk, permissions).expect("chmod");
    let error = check_templates(&templates).expect_err("writable template");
    assert!(error.to_string().contains("read-only"), "{error}");
}
