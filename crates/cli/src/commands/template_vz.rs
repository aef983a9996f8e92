//! `shoes-vz template import-tart` and `shoes-vz template create --ipsw`: macOS templates for
//! the vz backend, written to `<templates-dir>/<NAME>-<VERSION>/` (never over an existing one).
//! Importing is plain file work and runs anywhere; installing needs Virtualization.framework.
//! `shoes-vz template warm-vz`: a template's Saved State warm slots (macOS 14+; typed
//! Unsupported elsewhere).

use crate::human;
use crate::output::{print_json, Output};
use crate::stats::millis;
use anyhow::Context;
use shoes_vz_agent::config::AgentConfig;
use shoes_vz_agent::hypervisor::vz::warm::WarmRequest;
use shoes_vz_vz::slots::SlotId;
use shoes_vz_vz::tart::{self, TartImportOptions};
use shoes_vz_vz::template::{default_runner_dir, GuestAgent, TemplateLimits};
use std::path::PathBuf;

/// What every new vz template is told.
#[derive(clap::Args, Debug)]
pub struct NewTemplateArgs {
    /// Template name (letters, digits, '.', '_', '-'); runners ask for it.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "1")]
    version: String,
    /// A label of the template (repeat for more), e.g. --label macos --label arm64.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Templates directory [default: the agent's default templates_dir].
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// The guest user the agent logs in as over SSH.
    #[arg(long, default_value = "admin")]
    ssh_user: String,
    /// The GitHub Actions runner's directory in the guest
    /// [default: /tmp/runner, where myshoes' setup script installs it].
    #[arg(long, conflicts_with = "no_guest_agent")]
    runner_dir: Option<String>,
    /// The image has no shoes-vz-runner-agent and carries its own SSH keys (tests only): its
    /// runners get no config disk.
    #[arg(long)]
    no_guest_agent: bool,
    /// Largest vCPU count a runner may ask for [default: the VM's own].
    #[arg(long)]
    max_vcpus: Option<u32>,
    /// Largest memory (MiB) a runner may ask for [default: the VM's own].
    #[arg(long)]
    max_memory_mib: Option<u64>,
}

impl NewTemplateArgs {
    fn templates_dir(&self) -> PathBuf {
        self.templates_dir
            .clone()
            .unwrap_or_else(|| AgentConfig::default().templates_dir)
    }

    fn target_dir(&self) -> PathBuf {
        self.templates_dir()
            .join(format!("{}-{}", self.name, self.version))
    }

    fn guest_agent(&self) -> Option<GuestAgent> {
        (!self.no_guest_agent).then(|| GuestAgent {
            runner_dir: self.runner_dir.clone().unwrap_or_else(default_runner_dir),
        })
    }

    fn limits(&self, vcpus: u32, memory_mib: u64) -> TemplateLimits {
        TemplateLimits {
            max_vcpus: self.max_vcpus.unwrap_or(vcpus),
            max_memory_mib: self.max_memory_mib.unwrap_or(memory_mib),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ImportTartArgs {
    /// The tart VM directory (e.g. ~/.tart/vms/NAME), shut down; on the same copy-on-write
    /// volume as the templates directory.
    dir: PathBuf,
    /// `per-runner`: every runner gets a fresh machine identifier (default). `template`: every
    /// runner keeps the tart VM's (its `ecid`), as tart clones do; use it for images that boot
    /// into Setup Assistant on a new identifier (macOS 26.4+, tart#1222). docs/macos.md §3.
    #[arg(long, value_parser = ["per-runner", "template"], default_value = "per-runner")]
    machine_identity: String,
    #[command(flatten)]
    template: NewTemplateArgs,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The macOS restore image (.ipsw) to install, or `latest`: the newest one this Mac
    /// supports (Virtualization.framework asks Apple's catalog), downloaded resume-safe to
    /// `<templates-dir>/.ipsw/` (run again to continue an interrupted download).
    #[arg(long)]
    ipsw: PathBuf,
    #[command(flatten)]
    template: NewTemplateArgs,
    /// Size of the sparse Disk.img, in GiB (at least 32; only written blocks take space).
    #[arg(long, default_value_t = 64)]
    disk_gib: u64,
    /// vCPUs of the install VM (raised to the image's minimum).
    #[arg(long, default_value_t = 4)]
    vcpus: u32,
    /// Memory (MiB) of the install VM (raised to the image's minimum).
    #[arg(long, default_value_t = 8192)]
    memory_mib: u64,
    /// Minutes the install may take.
    #[arg(long, default_value_t = 120)]
    timeout_min: u64,
}

#[derive(clap::Args, Debug)]
pub struct WarmVzArgs {
    /// The vz template to warm (its metadata name).
    name: String,
    /// Templates directory [default: the agent's default templates_dir].
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// vCPUs of the warm VM; runners restore only when they ask for the same.
    #[arg(long, default_value_t = 4)]
    vcpus: u32,
    /// Memory (MiB) of the warm VM; runners restore only when they ask for the same.
    #[arg(long, default_value_t = 8192)]
    memory_mib: u64,
    /// Warm only this slot (0 or 1) [default: both].
    #[arg(long)]
    slot: Option<u8>,
    /// Seconds to wait for the guest's SSH server and runner-agent.
    #[arg(long, default_value_t = 600)]
    boot_timeout: u64,
}

impl WarmVzArgs {
    fn request(&self) -> anyhow::Result<WarmRequest> {
        let slots = match self.slot {
            Some(index) => vec![SlotId::new(index)?],
            None => SlotId::all().collect(),
        };
        let defaults = AgentConfig::default();
        Ok(WarmRequest {
            templates_dir: self.templates_dir.clone().unwrap_or(defaults.templates_dir),
            template: self.name.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            slots,
            boot_timeout: std::time::Duration::from_secs(self.boot_timeout),
            config: defaults.vz,
        })
    }
}

/// VMs started as root fail on macOS 15+ (the VZ service needs the user's unlocked login
/// keychain: tart#921, #1075); `template create` and `warm-vz` start VMs, so not under sudo.
pub fn refuse_root(is_root: bool, macos: bool) -> anyhow::Result<()> {
    if is_root && macos {
        anyhow::bail!(
            "do not run this as root (sudo): since macOS 15 Virtualization.framework refuses to \
             start VMs for root (\"Failed to generate keypair\"); run it as the user that owns \
             the VMs and the templates directory (docs/macos.md §5)"
        );
    }
    Ok(())
}

fn running_as_root() -> bool {
    use shoes_vz_agent::doctor::Probes;
    shoes_vz_agent::doctor::SystemProbes.running_as_root()
}

/// Warms the template's slots one after another (one VM at a time).
pub async fn warm_vz(args: WarmVzArgs, output: Output) -> anyhow::Result<()> {
    refuse_root(running_as_root(), cfg!(target_os = "macos"))?;
    let request = args.request()?;
    let warmed = shoes_vz_agent::hypervisor::vz::warm_template(&request).await?;
    if output.is_json() {
        let slots: Vec<serde_json::Value> = warmed
            .iter()
            .map(|slot| {
                serde_json::json!({
                    "slot": slot.slot.index(),
                    "dir": slot.dir,
                    "mac": slot.mac.to_string(),
                    "boot_to_ssh_ms": millis(slot.boot_to_ssh),
                    "save_ms": millis(slot.save),
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "template": request.template,
            "vcpus": request.vcpus,
            "memory_mib": request.memory_mib,
            "slots": slots,
        }));
    }
    for slot in &warmed {
        println!(
            "{} warmed: boot to SSH {:.1} s, state saved in {:.1} s, MAC {}: {}",
            slot.slot,
            slot.boot_to_ssh.as_secs_f64(),
            slot.save.as_secs_f64(),
            slot.mac,
            slot.dir.display()
        );
    }
    println!(
        "runners of {} with {} vCPUs and {} MiB restore once the agent runs with \
         vz.warm_slots = true (restart it to load the slots)",
        request.template, request.vcpus, request.memory_mib
    );
    Ok(())
}

/// Clones the tart VM's disk and NVRAM copy-on-write (never a full copy) into a new template.
pub async fn import_tart(args: ImportTartArgs, output: Output) -> anyhow::Result<()> {
    let target = args.template.target_dir();
    let source = args.dir.clone();
    let vm = tart::read_vm(&source)?;
    let mut options = TartImportOptions::new(
        &args.template.name,
        &args.template.version,
        args.template.labels.clone(),
    );
    options.ssh_user = args.template.ssh_user.clone();
    options.guest_agent = args.template.guest_agent();
    options.limits = Some(args.template.limits(
        vm.config.cpu_count,
        vm.config.memory_size / shoes_vz_vz::limits::MIB,
    ));
    options.machine_identity = if args.machine_identity == "template" {
        shoes_vz_vz::identity::MachineIdentityPolicy::Template
    } else {
        shoes_vz_vz::identity::MachineIdentityPolicy::PerRunner
    };
    // On a Mac an ASIF disk is refused here below macOS 26; elsewhere the agent checks it.
    options.host_macos = shoes_vz_vz::probe().ok().map(|host| host.macos);
    let imported = tokio::task::spawn_blocking(move || {
        tart::import_tart(&source, &target, &options, &tart::reflink_clone)
    })
    .await
    .context("the import task failed")??;
    let supported = hardware_model_supported(&imported.hardware_model)?;
    match supported {
        Some(true) => human!(output, "this host's macOS supports its hardware model"),
        Some(false) => eprintln!(
            "WARNING: this host's macOS does not support the template's hardware model; the \
             agent refuses it here until the host is updated"
        ),
        None => human!(
            output,
            "its hardware model is checked on the Mac (the agent checks it at start)"
        ),
    }
    match output {
        Output::Json => print_json(&serde_json::json!({
            "source": args.dir,
            "name": imported.metadata.name,
            "version": imported.metadata.version,
            "dir": imported.dir,
            "machine_identity": args.machine_identity,
            "disk_format": imported.options.disk_format.to_string(),
            "hardware_model_supported": supported,
        }))?,
        Output::Table => {
            println!(
                "imported {} as template {} {}: {} (machine identity {}, disk {})",
                args.dir.display(),
                imported.metadata.name,
                imported.metadata.version,
                imported.dir.display(),
                args.machine_identity,
                imported.options.disk_format
            );
            println!("the agent serves it from its next start");
        }
    }
    Ok(())
}

/// Whether this host's macOS runs the template's hardware model; `None` off macOS, where
/// nothing can tell (the agent checks it at start on the Mac).
#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
fn hardware_model_supported(
    model: &shoes_vz_vz::hardware::HardwareModel,
) -> anyhow::Result<Option<bool>> {
    Ok(Some(shoes_vz_vz::ffi::hardware_model_supported(model)?))
}

#[cfg(not(any(target_os = "macos", feature = "vz-typecheck")))]
fn hardware_model_supported(
    _model: &shoes_vz_vz::hardware::HardwareModel,
) -> anyhow::Result<Option<bool>> {
    Ok(None)
}

/// Installs macOS from an IPSW into a new template, with a progress bar.
#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
pub async fn create(args: CreateArgs, output: Output) -> anyhow::Result<()> {
    use shoes_vz_vz::ffi::{install_from_ipsw, IpswInstall};
    use shoes_vz_vz::template::TemplateInfo;

    refuse_root(running_as_root(), cfg!(target_os = "macos"))?;
    let template = &args.template;
    let ipsw = if args.ipsw.as_os_str() == LATEST {
        fetch_latest(&template.templates_dir(), output).await?
    } else {
        args.ipsw.clone()
    };
    let request = IpswInstall {
        ipsw,
        template_dir: template.target_dir(),
        info: TemplateInfo {
            name: template.name.clone(),
            version: template.version.clone(),
            labels: template.labels.clone(),
            ssh_user: template.ssh_user.clone(),
            limits: template.limits(args.vcpus, args.memory_mib),
            setup_shell: "bash -s".to_string(),
            guest_agent: template.guest_agent(),
        },
        disk_size_bytes: args
            .disk_gib
            .saturating_mul(1024 * shoes_vz_vz::limits::MIB),
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        timeout: std::time::Duration::from_secs(args.timeout_min.saturating_mul(60)),
    };
    let reserve = shoes_vz_agent::hypervisor::vz::host_reserve(&AgentConfig::default().vz);
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "installing macOS {wide_bar} {percent:>3}% ({elapsed_precise})",
        )
        .context("progress bar template")?,
    );
    let progress = bar.clone();
    let installed = install_from_ipsw(&request, reserve, move |fraction| {
        progress.set_position((fraction * 1000.0).round() as u64)
    })
    .await;
    match &installed {
        Ok(_) => bar.finish(),
        Err(_) => bar.abandon(),
    }
    let installed = installed?;
    if output.is_json() {
        let adjustments: Vec<serde_json::Value> = installed
            .adjustments
            .iter()
            .map(|change| {
                serde_json::json!({
                    "resource": change.resource,
                    "requested": change.requested,
                    "granted": change.granted,
                    "reason": change.reason,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "name": installed.metadata.name,
            "version": installed.metadata.version,
            "dir": installed.dir,
            "os_version": installed.restore_image.os_version.to_string(),
            "build_version": installed.restore_image.build_version,
            "adjustments": adjustments,
        }));
    }
    for change in &installed.adjustments {
        println!(
            "install VM {}: {} instead of {} ({})",
            change.resource, change.granted, change.requested, change.reason
        );
    }
    println!(
        "installed macOS {} ({}) as template {} {}: {}",
        installed.restore_image.os_version,
        installed.restore_image.build_version,
        installed.metadata.name,
        installed.metadata.version,
        installed.dir.display()
    );
    println!(
        "the guest starts in Setup Assistant: finish the image (docs/macos.md §3b, §4) before \
         serving it"
    );
    Ok(())
}

/// `--ipsw latest`.
pub const LATEST: &str = "latest";

/// Where `--ipsw latest` keeps restore images: on the templates volume, so the install reads
/// it locally and an interrupted download resumes.
pub fn ipsw_dir(templates_dir: &std::path::Path) -> PathBuf {
    templates_dir.join(".ipsw")
}

/// Asks the framework for the newest restore image this host supports and downloads it
/// (resume-safe, with a progress bar).
#[cfg(any(target_os = "macos", feature = "vz-typecheck"))]
async fn fetch_latest(templates_dir: &std::path::Path, output: Output) -> anyhow::Result<PathBuf> {
    let latest =
        shoes_vz_vz::ffi::fetch_latest_supported(std::time::Duration::from_secs(120)).await?;
    human!(
        output,
        "latest restore image this Mac supports: macOS {} ({})",
        latest.os_version,
        latest.build_version
    );
    let dest = ipsw_dir(templates_dir).join(crate::download::file_name_for(
        &latest.url,
        &format!("macOS-{}.ipsw", latest.build_version),
    ));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "downloading {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .context("progress bar template")?,
    );
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot make an HTTP client")?;
    let progress = bar.clone();
    let downloaded = crate::download::download(&client, &latest.url, &dest, move |done, total| {
        if let Some(total) = total {
            progress.set_length(total);
        }
        progress.set_position(done);
    })
    .await;
    match &downloaded {
        Ok(_) => bar.finish(),
        Err(_) => bar.abandon(),
    }
    Ok(downloaded?)
}

/// Off macOS there is no Virtualization.framework to install with.
#[cfg(not(any(target_os = "macos", feature = "vz-typecheck")))]
pub async fn create(args: CreateArgs, output: Output) -> anyhow::Result<()> {
    let _ = (args, output);
    Err(shoes_vz_vz::errors::unsupported_off_macos("install macOS from an IPSW").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(slot: Option<u8>) -> WarmVzArgs {
        WarmVzArgs {
            name: "macos-26".into(),
            templates_dir: Some("/t".into()),
            vcpus: 4,
            memory_mib: 8192,
            slot,
            boot_timeout: 60,
        }
    }

    #[test]
    fn vm_commands_refuse_root_on_macos() {
        let error = refuse_root(true, true).expect_err("root on a Mac");
        assert!(error.to_string().contains("docs/macos.md"), "{error}");
        refuse_root(false, true).expect("a normal user");
        refuse_root(true, false).expect("off macOS the framework is absent anyway");
    }

    #[test]
    fn warm_vz_warms_both_slots_or_the_one_asked_for() {
        let both = args(None).request().expect("request");
        assert_eq!(both.slots, SlotId::all().collect::<Vec<_>>());
        assert_eq!(both.templates_dir, PathBuf::from("/t"));
        let one = args(Some(1)).request().expect("request");
        assert_eq!(one.slots, vec![SlotId::new(1).expect("slot")]);
        assert!(args(Some(2)).request().is_err(), "only slots 0 and 1 exist");
    }

    #[cfg(not(target_os = "macos"))]
    #[tokio::test]
    async fn warm_vz_is_a_typed_unsupported_off_macos() {
        let error = warm_vz(args(None), Output::Table)
            .await
            .expect_err("no framework here");
        let error = error
            .downcast_ref::<shoes_vz_agent::hypervisor::HypervisorError>()
            .expect("a hypervisor error");
        assert!(
            matches!(
                error,
                shoes_vz_agent::hypervisor::HypervisorError::Unsupported { .. }
            ),
            "{error}"
        );
    }
}
