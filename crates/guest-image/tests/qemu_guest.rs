//! Real VMs: builds the test guest from Debian packages and boots it with the `qemu`
//! backend (TCG here; KVM on bare metal). Skips loudly without qemu-system-x86_64 or apt
//! (`.ci/qemu-deps.sh` installs them in CI).
//!
//! Most tests use an image variant with an authorized key and a host key baked in
//! (`DevKeys`), so they do not depend on the runner-agent; one test runs the real
//! runner-agent with a per-runner config disk (skipped when its binary is not built).

mod common;

use common::*;
use shoes_vz_agent::bundle;
use shoes_vz_agent::hypervisor::qemu::warm::{make_warm_template, WarmOptions};
use shoes_vz_agent::hypervisor::qemu::{process, state, Machine, StopHow, PID_FILE, QEMU_LOG};
use shoes_vz_agent::hypervisor::{Hypervisor, LinuxBootFiles, VmEvent};
use shoes_vz_agent::ssh;
use shoes_vz_agent::template;
use shoes_vz_guest_image::bench::{bare_boot_to_ssh, BareBoot};
use shoes_vz_guest_image::{build_test_guest, BuildOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_vm_boots_to_ssh_runs_scripts_and_is_torn_down() {
    let Some(guest) = guest() else { return };
    let _one = one_vm_at_a_time().await;
    let backend = backend();
    let runner = runner(guest);
    let started = Instant::now();
    backend.start(&runner.spec).await.expect("QEMU starts");
    let endpoint = backend
        .guest_endpoint(&runner.id, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no address: {e}\n{}", console(&runner.bundle.dir)));
    let to_ip = started.elapsed();
    assert_eq!(endpoint.ip_address, "10.0.2.15");
    assert_eq!(endpoint.ssh_addr.ip().to_string(), "127.0.0.1");
    let session = ssh::wait_ready(&target(guest, endpoint.ssh_addr), BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no ssh: {e}\n{}", console(&runner.bundle.dir)));
    let to_ssh = started.elapsed();
    eprintln!("boot to IP {to_ip:?}, to SSH {to_ssh:?}");

    let out = run(
        &session,
        "id -un; cat /proc/cmdline; mount | grep ' /home/runner '; \
         echo marker > /home/runner/marker; cat /home/runner/marker; \
         cat /sys/class/net/eth0/address",
    )
    .await;
    session.close().await;
    let uuid =
        shoes_vz_agent::hypervisor::qemu::identity::machine_uuid(runner.bundle.machine_identifier);
    let mac = shoes_vz_agent::hypervisor::qemu::identity::format_mac(
        shoes_vz_agent::hypervisor::qemu::identity::mac_address(runner.bundle.machine_identifier),
    );
    assert!(out.starts_with("runner\n"), "{out}");
    assert!(out.contains(&format!("shoesvz.machine_id={uuid}")), "{out}");
    assert!(
        out.contains("/home/runner type ext4"),
        "runner disk mounted: {out}"
    );
    assert!(out.contains("marker\n"), "{out}");
    assert!(out.contains(&mac), "per-runner MAC: {out}");

    let pid = pid_of(&runner.bundle.dir);
    let mut events = backend.subscribe();
    backend
        .stop(&runner.id, Duration::from_secs(20))
        .await
        .expect("stop");
    assert!(!process_alive(pid), "QEMU {pid} still running");
    assert!(
        events.try_recv().is_err(),
        "a requested stop is not an unexpected exit"
    );
    bundle::remove(&runner.bundle.dir).expect("remove bundle");
    assert!(!runner.bundle.dir.exists());
    backend
        .stop(&runner.id, Duration::from_secs(1))
        .await
        .expect("stopping twice is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_exit_is_reported_and_leftovers_are_ended_after_a_restart() {
    let Some(guest) = guest() else { return };
    let _one = one_vm_at_a_time().await;
    let backend = backend();
    let mut events = backend.subscribe();

    // A QEMU killed behind the backend's back is an exit event.
    let crashed = runner(guest);
    backend.start(&crashed.spec).await.expect("start");
    let pid = pid_of(&crashed.bundle.dir);
    process::signal(pid, nix_sigkill());
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an exit event in time")
        .expect("event");
    let VmEvent::Exited { runner_id, detail } = event;
    assert_eq!(runner_id, crashed.id);
    assert!(detail.contains("QEMU exited"), "{detail}");
    backend
        .stop(&crashed.id, Duration::from_secs(1))
        .await
        .expect("stop after a crash");

    // A QEMU from "an earlier agent": a new backend finds it through its bundle and ends it.
    let left = runner(guest);
    backend.start(&left.spec).await.expect("start");
    let pid = pid_of(&left.bundle.dir);
    let restarted = self::backend();
    restarted
        .clean_leftover(&left.bundle.dir)
        .await
        .expect("leftover ended");
    assert!(!process_alive(pid), "leftover QEMU {pid} still running");
    assert!(process::find(&left.bundle.dir.join(PID_FILE)).is_empty());
    backend
        .stop(&left.id, Duration::from_secs(1))
        .await
        .expect("stop");
    // Nothing to end for a bundle without QEMU.
    restarted
        .clean_leftover(&left.bundle.dir)
        .await
        .expect("nothing left");
}

fn nix_sigkill() -> nix::sys::signal::Signal {
    nix::sys::signal::Signal::SIGKILL
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_state_restores_to_ssh_ready() {
    let Some(guest) = guest() else { return };
    let _one = one_vm_at_a_time().await;
    let backend = backend();
    let warm = runner(guest);
    let spec = backend.machine_spec(&warm.spec, None).expect("spec");
    let machine = Machine::launch(
        &spec,
        &warm.bundle.dir.join(QEMU_LOG),
        Duration::from_secs(15),
        Box::new(|_| {}),
    )
    .await
    .expect("launch");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], machine.ports.ssh));
    let session = ssh::wait_ready(&target(guest, addr), BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no ssh: {e}\n{}", console(&warm.bundle.dir)));
    run(
        &session,
        "sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true",
    )
    .await;
    session.close().await;
    let state_file = warm.bundle.dir.join("state.bin");
    {
        let mut qmp = machine.qmp().await;
        let qmp = qmp.as_mut().expect("qmp");
        let saving = Instant::now();
        state::save(qmp, &state_file, Duration::from_secs(60))
            .await
            .expect("state saved");
        eprintln!(
            "saved {} MB in {:?}",
            std::fs::metadata(&state_file).expect("state").len() >> 20,
            saving.elapsed()
        );
    }
    machine.shutdown(Duration::ZERO).await;

    // Same devices and memory; the disk as it was at the save.
    let restored = runner(guest);
    std::fs::copy(&warm.spec.disk_files[0], &restored.spec.disk_files[0]).expect("disk");
    let mut spec = backend
        .machine_spec(&restored.spec, Some(state_file.clone()))
        .expect("spec");
    spec.mac = backend.machine_spec(&warm.spec, None).expect("spec").mac;
    let started = Instant::now();
    let machine = Machine::launch(
        &spec,
        &restored.bundle.dir.join(QEMU_LOG),
        Duration::from_secs(15),
        Box::new(|_| {}),
    )
    .await
    .expect("launch restore");
    {
        let mut qmp = machine.qmp().await;
        state::resume_incoming(qmp.as_mut().expect("qmp"), Duration::from_secs(60))
            .await
            .expect("resumed");
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], machine.ports.ssh));
    let session = ssh::wait_ready(&target(guest, addr), BOOT_TIMEOUT)
        .await
        .expect("ssh after restore");
    eprintln!("restore to SSH {:?}", started.elapsed());
    let out = run(&session, "cat /proc/uptime; id -un").await;
    assert!(out.contains("runner"), "{out}");
    session.close().await;
    let pid = machine.pid;
    let how = machine.shutdown(Duration::from_secs(20)).await;
    assert_eq!(
        how,
        StopHow::PoweredOff,
        "the guest obeys the ACPI power button"
    );
    assert!(!process_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_qemu_baseline_reaches_ssh() {
    let Some(guest) = guest() else { return };
    let _one = one_vm_at_a_time().await;
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ssh").is_file()));
    if !on_path {
        shoes_vz_test_support::prerequisite_missing(
            "ssh is not installed",
            "install openssh-client",
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("Disk.img");
    std::fs::copy(guest.template.dir.join("Disk.img"), &disk).expect("disk copy");
    let boot = LinuxBootFiles::from_template(&guest.template).expect("linux boot");
    let timing = bare_boot_to_ssh(&BareBoot {
        qemu_binary: "qemu-system-x86_64".into(),
        accel: backend().accel(),
        kernel: boot.kernel,
        initrd: boot.initrd.expect("initrd"),
        disks: vec![disk],
        readonly_disks: vec![],
        vcpus: 1,
        memory_mib: 256,
        ssh_key: guest.client_key_file.clone(),
        ssh_user: "runner".into(),
        timeout: BOOT_TIMEOUT,
    })
    .await
    .expect("bare boot reaches ssh");
    eprintln!(
        "bare QEMU: spawned {:?}, ssh ready {:?} after {} attempts",
        timing.spawned, timing.ssh_ready, timing.ssh_attempts
    );
    assert!(timing.ssh_attempts >= 1);
}

/// The runner-agent flow: per-runner keys from a config disk (no baked keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_agent_installs_keys_from_the_config_disk() {
    if let Some(reason) = tools_missing() {
        shoes_vz_test_support::prerequisite_missing_because(&reason);
        return;
    }
    let Some(agent_binary) = shoes_vz_guest_image::find_runner_agent() else {
        shoes_vz_test_support::prerequisite_missing(
            "no shoes-vz-runner-agent binary",
            "`cargo build -p shoes-vz-runner-agent`",
        );
        return;
    };
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shoes-vz-test-guest");
    let options = BuildOptions {
        runner_agent: Some(agent_binary),
        cache_dir: root.join("templates").join(".cache").join("debs"),
        ..BuildOptions::new(&root.join("templates-agent"))
    };
    let built = tokio::task::spawn_blocking(move || build_test_guest(&options))
        .await
        .expect("join")
        .expect("the runner-agent image builds");
    let template = template::load(&built.dir).expect("template");
    let _one = one_vm_at_a_time().await;

    let client_key = Arc::new(ssh::generate_ed25519().expect("key"));
    let host_key = Arc::new(ssh::generate_ed25519().expect("key"));
    let guest = Guest {
        template,
        client_key: Arc::clone(&client_key),
        host_key: Arc::clone(&host_key),
        client_key_file: PathBuf::new(),
    };
    let mut runner = runner(&guest);
    let config_disk = runner.bundle.dir.join("config.img");
    let config = shoes_vz_guest_config::GuestConfig {
        version: shoes_vz_guest_config::FORMAT_VERSION,
        runner_id: runner.id.to_string(),
        api_token: shoes_vz_guest_config::ApiToken::generate().expect("token"),
        // Nothing listens there: the guest keeps retrying its notify, which SSH does not need.
        notify_url: "http://10.0.2.2:9/v1/notify".into(),
        ssh_user: "runner".into(),
        ssh_authorized_key: ssh::authorized_key_line(client_key.public_key()),
        ssh_host_key: shoes_vz_guest_config::OpenSshPrivateKey::new(
            host_key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .expect("encode")
                .to_string(),
        )
        .expect("host key"),
        ssh_host_public_key: ssh::authorized_key_line(host_key.public_key()),
        http_listen: shoes_vz_guest_config::default_http_listen(),
        runner_dir: "/home/runner/actions-runner".into(),
        host_time_ms: None,
    };
    shoes_vz_guest_config::write_image(&config_disk, &config).expect("config disk");
    runner.spec.config_disk = Some(config_disk);

    let backend = backend();
    backend.start(&runner.spec).await.expect("start");
    let endpoint = backend
        .guest_endpoint(&runner.id, BOOT_TIMEOUT)
        .await
        .expect("address");
    let session = ssh::wait_ready(&target(&guest, endpoint.ssh_addr), BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no ssh: {e}\n{}", console(&runner.bundle.dir)));
    let out = run(&session, "id -un; cat ~/.ssh/authorized_keys").await;
    session.close().await;
    assert!(out.starts_with("runner\n"), "{out}");
    backend
        .stop(&runner.id, Duration::from_secs(20))
        .await
        .expect("stop");
}

/// A warm template restores to SSH-ready through the backend; a broken state boots cold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_of_a_warm_template_restore_and_fall_back_to_a_cold_boot() {
    let Some(cold) = guest() else { return };
    let _one = one_vm_at_a_time().await;
    let backend = backend();
    // A private copy of the cold template, so warm versions do not race other tests.
    let templates = tempfile::tempdir().expect("tempdir");
    let base_dir = templates
        .path()
        .join(cold.template.dir.file_name().expect("name"));
    std::fs::create_dir_all(&base_dir).expect("mkdir");
    for entry in std::fs::read_dir(&cold.template.dir).expect("list") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, base_dir.join(path.file_name().expect("name"))).expect("copy");
    }
    let base = template::load(&base_dir).expect("base");
    let options = WarmOptions {
        vcpus: 1,
        memory_mib: 256,
        config_disk: None,
        guest_token: None,
        boot_timeout: BOOT_TIMEOUT,
        force: false,
    };
    let warm = make_warm_template(&backend, &base, &options)
        .await
        .expect("warm template");
    eprintln!(
        "warm template: boot to SSH {:?}, save {:?}, state {} MB",
        warm.boot_to_ssh,
        warm.save,
        warm.state_bytes >> 20
    );
    assert!(warm.built);
    let again = make_warm_template(&backend, &base, &options)
        .await
        .expect("cached");
    assert!(!again.built, "a matching warm template is reused");
    assert_eq!(again.dir, warm.dir);
    let warm_template = template::load(&warm.dir).expect("warm template loads");
    assert_eq!(warm_template.metadata.name, "test-guest-warm");
    let all = template::load_all(templates.path(), "qemu").expect("both load");
    assert_eq!(all.len(), 2, "cold and warm side by side");

    let warm_guest = Guest {
        template: warm_template,
        client_key: Arc::clone(&cold.client_key),
        host_key: Arc::clone(&cold.host_key),
        client_key_file: cold.client_key_file.clone(),
    };
    let restored = runner(&warm_guest);
    assert!(restored.spec.restore.is_some());
    let started = Instant::now();
    backend.start(&restored.spec).await.expect("restore");
    let endpoint = backend
        .guest_endpoint(&restored.id, BOOT_TIMEOUT)
        .await
        .expect("endpoint");
    let session = ssh::wait_ready(&target(&warm_guest, endpoint.ssh_addr), BOOT_TIMEOUT)
        .await
        .expect("ssh after restore");
    eprintln!("warm start to SSH {:?}", started.elapsed());
    assert_eq!(endpoint.ip_address, "10.0.2.15");
    let out = run(&session, "mount | grep ' /home/runner '; id -un").await;
    session.close().await;
    assert!(out.contains("runner"), "{out}");
    assert_eq!(backend.restore_fallbacks(), 0);
    backend
        .stop(&restored.id, Duration::from_secs(20))
        .await
        .expect("stop");

    // A corrupt state: QEMU fails to load it, the runner boots cold and still comes up.
    let mut broken = runner(&warm_guest);
    let bad_state = broken.bundle.dir.join("bad-state.bin");
    std::fs::write(&bad_state, b"not a QEMU migration stream").expect("write");
    if let Some(restore) = broken.spec.restore.as_mut() {
        restore.state_file = bad_state;
    }
    backend.start(&broken.spec).await.expect("cold fallback");
    assert_eq!(backend.restore_fallbacks(), 1);
    let endpoint = backend
        .guest_endpoint(&broken.id, BOOT_TIMEOUT)
        .await
        .expect("endpoint");
    let session = ssh::wait_ready(&target(&warm_guest, endpoint.ssh_addr), BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no ssh after fallback: {e}\n{}",
                console(&broken.bundle.dir)
            )
        });
    session.close().await;
    assert!(broken.bundle.dir.join("qemu.restore.log").is_file());
    backend
        .stop(&broken.id, Duration::from_secs(20))
        .await
        .expect("stop");
}
