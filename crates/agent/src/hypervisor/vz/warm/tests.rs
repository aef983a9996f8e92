use super::*;
use crate::bundle::{MachineIdentifier, RuntimeMetadata};
use shoes_vz_model::RunnerId;
use shoes_vz_vz::hardware::{MachineIdentifierFile, VzMachineIdentifier};
use shoes_vz_vz::limits::{FrameworkLimits, HostResources, Limits, MIB};
use shoes_vz_vz::plan::SavedStateKey;

fn limits() -> Limits {
    Limits {
        framework: FrameworkLimits {
            min_cpus: 1,
            max_cpus: 64,
            min_memory_bytes: 128 * MIB,
            max_memory_bytes: 1024 * 1024 * MIB,
        },
        host: HostResources {
            cpus: 10,
            memory_bytes: 32 * 1024 * MIB,
        },
        reserve: super::super::host_reserve(&crate::config::VzConfig::default()),
    }
}

/// The macOS the slots in these tests were saved on, and this "host" runs.
const HOST: MacosVersion = MacosVersion::new(26, 0, 1);

fn host() -> super::super::HostContext {
    super::super::HostContext {
        limits: limits(),
        macos: HOST,
    }
}

fn slots_of(root: &Path, template: &str, version: &str) -> Vec<UsableSlot> {
    load_slots(root, template, version, HOST).usable
}

fn model() -> HardwareModel {
    HardwareModel::from_bytes(b"model".to_vec()).expect("model")
}

fn spec(bundle_dir: &Path, ecid: u64) -> VmSpec {
    let client = crate::ssh::generate_ed25519().expect("client key");
    let host = crate::ssh::generate_ed25519().expect("host key");
    VmSpec {
        runner_id: RunnerId::generate(),
        bundle_dir: bundle_dir.to_path_buf(),
        disk_files: Vec::new(),
        vcpus: 4,
        memory_mib: 8192,
        machine_identifier: MachineIdentifier { ecid },
        ssh_user: "admin".into(),
        authorized_key: client.public_key().clone(),
        guest_host_key: Arc::new(host),
        linux_boot: None,
        config_disk: Some(bundle_dir.join("config.img")),
        restore: None,
    }
}

/// The key a slot warmed at 4 vCPUs / 8 GiB with a config disk would record.
fn key(seed: u64) -> SavedStateKey {
    let request = PlanRequest {
        vcpus: 4,
        memory_mib: 8192,
        disk: "/w/Disk.img".into(),
        auxiliary_storage: "/w/AuxiliaryStorage".into(),
        hardware_model: model(),
        machine_identifier: VzMachineIdentifier::from_bytes(seed.to_be_bytes().to_vec())
            .expect("id"),
        mac: MacAddress::derive(seed),
        config_disk: Some("/w/config.img".into()),
        purpose: VmPurpose::WarmSlot,
        host_macos: HOST,
        display: VzOptions::default().display,
        disk_sync: DiskSync::Full,
    };
    plan::build(request, &limits())
        .expect("plan")
        .saved_state_key()
}

fn warm_slot(index: u8, seed: u64, version: &str) -> WarmSlot {
    WarmSlot {
        slot: SlotId::new(index).expect("slot"),
        template: "macos-26".into(),
        template_version: version.into(),
        saved_on_host: "26.0.1".into(),
        key: key(seed),
    }
}

/// Warms a slot the way `warming` does, minus the VM: staging files, then publish.
fn publish(templates_dir: &Path, index: u8, seed: u64, version: &str) -> PathBuf {
    let root = warm_root(templates_dir, "macos-26");
    let slot = SlotId::new(index).expect("slot");
    let staging = staging_dir(&root, slot);
    std::fs::create_dir_all(&staging).expect("mkdir");
    for name in [
        DISK_FILE,
        AUXILIARY_STORAGE_FILE,
        HARDWARE_MODEL_FILE,
        SAVED_STATE_FILE,
        WARMING_CONFIG_DISK,
    ] {
        std::fs::write(staging.join(name), format!("{name} of slot {index}")).expect("write");
    }
    let token = ApiToken::generate().expect("token");
    publish_slot(&root, &staging, &warm_slot(index, seed, version), &token).expect("publish")
}

#[test]
fn warm_slots_live_beside_the_template_and_round_trip() {
    let templates = tempfile::tempdir().expect("tempdir");
    let root = warm_root(templates.path(), "macos-26");
    assert_eq!(root, templates.path().join("macos-26-warm"));
    let dir = publish(templates.path(), 1, 11, "1");
    assert_eq!(dir, root.join("slot-1"));
    assert!(!staging_dir(&root, SlotId::new(1).expect("slot")).exists());
    assert!(
        !dir.join(WARMING_CONFIG_DISK).exists(),
        "throwaway disk dropped"
    );
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(GUEST_TOKEN_FILE), 0o400, "the token is secret");
    assert_eq!(
        mode(SAVED_STATE_FILE),
        0o400,
        "the saved memory holds the token"
    );
    assert_eq!(mode(DISK_FILE), 0o444, "slot files are read-only");
    assert!(
        !root.join(crate::template::METADATA_FILE).exists(),
        "template loaders skip the warm directory"
    );

    let slots = slots_of(&root, "macos-26", "1");
    assert_eq!(slots.len(), 1);
    let slot = &slots[0];
    assert_eq!(slot.warm, warm_slot(1, 11, "1"));
    assert_eq!(slot.files, SlotFiles::new(&root, slot.warm.slot));
    assert_eq!(slot.warm.identity().mac, MacAddress::derive(11));
    assert_eq!(slot.files.missing(), None);

    // Warming again replaces the slot in place.
    publish(templates.path(), 1, 12, "1");
    let slots = slots_of(&root, "macos-26", "1");
    assert_eq!(slots[0].warm.key.mac_address, MacAddress::derive(12));
    assert!(!root.join(".slot-1.old").exists());
}

#[test]
fn slots_of_another_version_or_with_missing_files_are_skipped() {
    let templates = tempfile::tempdir().expect("tempdir");
    let root = warm_root(templates.path(), "macos-26");
    publish(templates.path(), 0, 1, "1");
    let dir = publish(templates.path(), 1, 2, "1");
    assert!(slots_of(&root, "macos-26", "2").is_empty(), "other version");
    assert!(
        slots_of(&root, "macos-27", "1").is_empty(),
        "other template"
    );
    std::fs::remove_file(dir.join(SAVED_STATE_FILE)).expect("rm");
    let slots = slots_of(&root, "macos-26", "1");
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].warm.slot.index(), 0);
}

#[test]
fn slots_saved_on_another_host_version_are_skipped_and_counted() {
    let templates = tempfile::tempdir().expect("tempdir");
    publish(templates.path(), 0, 1, "1");
    publish(templates.path(), 1, 2, "1");
    let root = warm_root(templates.path(), "macos-26");
    let updated = MacosVersion::new(26, 1, 0);
    let loaded = load_slots(&root, "macos-26", "1", updated);
    assert!(loaded.usable.is_empty(), "saved on 26.0.1, host runs 26.1");
    assert_eq!(loaded.other_host, 2);
    let slots = WarmSlots::load(
        templates.path(),
        [("macos-26", "1", MachineIdentityPolicy::PerRunner)],
        updated,
    )
    .expect("load");
    assert_eq!(slots.count(), 0);
    assert_eq!(slots.skipped_other_host(), 2);
}

#[test]
fn slots_are_held_by_one_runner_and_freed_by_a_failed_restore() {
    let templates = tempfile::tempdir().expect("tempdir");
    publish(templates.path(), 0, 1, "1");
    publish(templates.path(), 1, 2, "1");
    let per_runner = MachineIdentityPolicy::PerRunner;
    let slots = WarmSlots::load(
        templates.path(),
        [("macos-26", "1", per_runner), ("other", "1", per_runner)],
        HOST,
    )
    .expect("load");
    assert_eq!(slots.count(), 2);
    assert_eq!(slots.skipped_other_host(), 0);
    let slots = Arc::new(Mutex::new(slots));

    assert!(
        SlotLease::allocate(&slots, "macos-26", "2", "a").is_none(),
        "other version"
    );
    assert!(
        SlotLease::allocate(&slots, "other", "1", "a").is_none(),
        "never warmed"
    );

    // A restore that worked keeps its slot until the runner's VM stops.
    let a = SlotLease::allocate(&slots, "macos-26", "1", "a").expect("slot 0");
    let slot_a = a.keep();
    assert_eq!(slot_a.index(), 0);
    assert_eq!(lock(&slots).holder("macos-26", slot_a), Some("a"));

    // A restore that failed (or was skipped) drops its lease: the slot is free at once.
    {
        let b = SlotLease::allocate(&slots, "macos-26", "1", "b").expect("slot 1");
        assert_eq!(b.slot.warm.slot.index(), 1);
        assert!(
            SlotLease::allocate(&slots, "macos-26", "1", "c").is_none(),
            "all busy"
        );
    }
    let c = SlotLease::allocate(&slots, "macos-26", "1", "c").expect("slot 1 again");
    assert_eq!(c.slot.warm.slot.index(), 1);
    let slot_c = c.keep();

    // Stopping a runner frees its slot; unknown runners are fine.
    assert_eq!(lock(&slots).release("a"), Some(slot_a));
    assert_eq!(lock(&slots).release("a"), None);
    assert_eq!(lock(&slots).holder("macos-26", slot_c), Some("c"));
    assert!(SlotLease::allocate(&slots, "macos-26", "1", "d").is_some());

    // A cold runner never takes a slot's MAC.
    assert!(lock(&slots).check_cold_mac(MacAddress::derive(2)).is_err());
    lock(&slots)
        .check_cold_mac(MacAddress::derive(3))
        .expect("free MAC");
}

#[test]
fn a_restore_uses_the_slot_disk_and_identity_and_a_cold_boot_the_runner_own() {
    let templates = tempfile::tempdir().expect("tempdir");
    publish(templates.path(), 0, 5, "1");
    let root = warm_root(templates.path(), "macos-26");
    let slot = slots_of(&root, "macos-26", "1").remove(0);
    let bundle = Path::new("/runners/r.bundle");
    let spec = spec(bundle, 0xfeed);

    let restore = plan_restore(
        restore_request(
            &spec,
            &slot,
            model(),
            DiskSync::None,
            HOST,
            &VzOptions::default(),
        ),
        &slot,
        &limits(),
    )
    .expect("compatible");
    assert_eq!(restore.boot_disk, bundle.join(WARM_DISK_FILE));
    assert_eq!(
        restore.auxiliary_storage,
        bundle.join(WARM_AUXILIARY_STORAGE_FILE)
    );
    assert_eq!(restore.mac(), MacAddress::derive(5), "the slot's MAC");
    assert_eq!(restore.machine_identifier, slot.warm.key.machine_identifier);
    assert_eq!(
        restore.config_disk, spec.config_disk,
        "the runner's secrets"
    );

    let identity = MachineIdentifierFile {
        ecid: 0xfeed,
        vz_machine_identifier: Some(VzMachineIdentifier::from_bytes(b"own".to_vec()).expect("id")),
    };
    let cold = super::super::plan_for(
        &spec,
        &identity,
        model(),
        &host(),
        &crate::config::VzConfig::default(),
        &VzOptions::default(),
    )
    .expect("cold plan");
    assert_eq!(
        cold.devices, restore.devices,
        "one device list, warm or cold"
    );
    assert!(!cold.devices.entropy);
    assert_eq!(cold.boot_disk, bundle.join(DISK_FILE), "the golden clone");
    assert_eq!(cold.auxiliary_storage, bundle.join(AUXILIARY_STORAGE_FILE));
    assert_eq!(
        cold.mac(),
        MacAddress::derive(0xfeed),
        "the runner's own MAC"
    );
    assert_ne!(cold.machine_identifier, restore.machine_identifier);

    // Another VM shape than the saved one is not restored (a cold boot, not a failure).
    let mut bigger = spec.clone();
    bigger.memory_mib = 16384;
    let skipped = plan_restore(
        restore_request(
            &bigger,
            &slot,
            model(),
            DiskSync::Full,
            HOST,
            &VzOptions::default(),
        ),
        &slot,
        &limits(),
    )
    .expect_err("memory differs");
    assert!(
        crate::error_chain(&skipped).contains("memoryBytes"),
        "{skipped}"
    );
    let mut no_config = spec.clone();
    no_config.config_disk = None;
    assert!(plan_restore(
        restore_request(
            &no_config,
            &slot,
            model(),
            DiskSync::Full,
            HOST,
            &VzOptions::default(),
        ),
        &slot,
        &limits()
    )
    .is_err());
}

#[test]
fn slot_files_are_cloned_writable_beside_the_golden_ones() {
    let templates = tempfile::tempdir().expect("tempdir");
    publish(templates.path(), 0, 5, "1");
    let root = warm_root(templates.path(), "macos-26");
    let slot = slots_of(&root, "macos-26", "1").remove(0);
    let bundle = tempfile::tempdir().expect("bundle");
    std::fs::write(bundle.path().join(DISK_FILE), "golden").expect("golden");
    clone_slot_into_bundle(&slot.files, bundle.path(), CloneMode::Copy).expect("clone");
    let warm_disk = bundle.path().join(WARM_DISK_FILE);
    assert_eq!(
        std::fs::read_to_string(&warm_disk).expect("read"),
        "Disk.img of slot 0"
    );
    assert!(!std::fs::metadata(&warm_disk)
        .expect("meta")
        .permissions()
        .readonly());
    assert_eq!(
        std::fs::read_to_string(bundle.path().join(DISK_FILE)).expect("read"),
        "golden",
        "the cold fallback's disk is untouched"
    );
}

#[test]
fn the_runner_template_comes_from_its_runtime_metadata() {
    let bundle = tempfile::tempdir().expect("bundle");
    assert_eq!(runner_template(bundle.path()), None);
    let runtime = RuntimeMetadata {
        template: "macos-26".into(),
        template_version: "3".into(),
        ..RuntimeMetadata::default()
    };
    std::fs::write(
        bundle.path().join(crate::bundle::RUNTIME_METADATA_FILE),
        serde_json::to_vec(&runtime).expect("json"),
    )
    .expect("write");
    assert_eq!(
        runner_template(bundle.path()),
        Some(("macos-26".to_string(), "3".to_string()))
    );
}

#[test]
fn saved_state_needs_macos_14_as_a_typed_unsupported() {
    let error = saved_state_gate("13.6".parse().expect("version")).expect_err("too old");
    assert!(
        matches!(error, HypervisorError::Unsupported { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("macOS 14"), "{error}");
    saved_state_gate("14.0".parse().expect("version")).expect("14 is enough");
    saved_state_gate("26.0".parse().expect("version")).expect("26 too");
}

#[test]
fn new_slot_macs_avoid_other_slots_and_throwaway_configs_are_valid() {
    let taken = vec![warm_slot(0, 1, "1").identity()];
    let mac = new_slot_mac(&taken);
    assert_ne!(mac, taken[0].mac);
    assert!(mac.is_locally_administered() && mac.is_unicast());
    let (config, token) =
        throwaway_guest_config("admin", "/Users/admin/actions-runner").expect("config");
    config.validate().expect("a valid guest config");
    assert_eq!(config.api_token.expose(), token.expose());
    assert!(config.notify_url.starts_with("http://192.168.64.1:"));
}

#[cfg(not(target_os = "macos"))]
#[tokio::test]
async fn warming_off_macos_is_a_typed_unsupported() {
    let request = WarmRequest {
        templates_dir: "/nonexistent".into(),
        template: "macos-26".into(),
        vcpus: 4,
        memory_mib: 8192,
        slots: SlotId::all().collect(),
        boot_timeout: std::time::Duration::from_secs(1),
        config: crate::config::VzConfig::default(),
    };
    let error = super::super::warm_template(&request)
        .await
        .expect_err("no framework here");
    assert!(
        matches!(error, HypervisorError::Unsupported { .. }),
        "{error}"
    );
}
