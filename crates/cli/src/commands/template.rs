//! `shoes-vz template …`: build the QEMU test guest template; make warm templates; import or
//! install macOS templates for the vz backend (`template_vz`).

use crate::human;
use crate::output::{print_json, Output};
use crate::progress::Progress;
use crate::stats::millis;
use anyhow::Context;
use shoes_vz_agent::config::AgentConfig;
use shoes_vz_agent::{ssh, template};
use shoes_vz_guest_image::{
    build_test_guest, find_runner_agent, find_standin_runner, BuildOptions, DevKeys,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum TemplateCommand {
    /// Build the QEMU test guest (Debian kernel + initramfs with busybox, dropbear and the
    /// runner-agent) into `<templates-dir>/<name>-<version>/`. Cached: rebuilt only when its
    /// inputs (package versions, runner-agent binary, boot scripts, options) change.
    ///
    /// --output json: {"name", "version", "built" (false: an up-to-date one was kept), "dir",
    /// "elapsed_ms", "dev_host_public_key" (with --dev-authorized-key and a fresh host key, else
    /// null)}.
    BuildTestGuest(BuildTestGuestArgs),
    /// Boot a QEMU template until its SSH server answers, save the VM's state, and publish
    /// it as the warm template `<NAME>-warm`: its runners restore instead of booting (and
    /// boot cold if a restore fails). Runners must ask for the same vCPUs and memory.
    ///
    /// --output json: {"name", "built" (false: a matching one was kept), "dir",
    /// "boot_to_ssh_ms", "save_ms", "state_bytes" (the last three null when not built)}.
    Warm(WarmArgs),
    /// Import a tart macOS VM (config.json, disk.img, nvram.bin) as a vz template in
    /// `<templates-dir>/<NAME>-<VERSION>/`, cloned copy-on-write (never a full copy).
    ///
    /// --output json: {"source", "name", "version", "dir", "machine_identity", "disk_format",
    /// "hardware_model_supported" (null off macOS: the agent checks it on the Mac)}.
    ImportTart(super::template_vz::ImportTartArgs),
    /// Install macOS from an IPSW into a new vz template (macOS on Apple silicon only).
    ///
    /// --output json: {"name", "version", "dir", "os_version", "build_version",
    /// "adjustments": [{"resource", "requested", "granted", "reason"}]}; the progress bars
    /// stay on stderr.
    Create(super::template_vz::CreateArgs),
    /// Make a vz template's Saved State warm slots (macOS 14+) in `<templates-dir>/<NAME>-warm/`:
    /// boot it per slot until SSH answers, pause, save. Runners of the same vCPUs and memory
    /// then restore instead of booting (agent `vz.warm_slots = true`; restart the agent).
    ///
    /// --output json: {"template", "vcpus", "memory_mib", "slots": [{"slot" (0 or 1), "dir",
    /// "mac", "boot_to_ssh_ms", "save_ms"}]}.
    WarmVz(super::template_vz::WarmVzArgs),
}

#[derive(clap::Args, Debug)]
pub struct WarmArgs {
    /// The template to warm (its metadata name).
    name: String,
    /// Templates directory [default: the agent's default templates_dir].
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    #[arg(long, default_value_t = 1024)]
    memory_mib: u64,
    /// Seconds to wait for the guest's SSH server.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
    /// Make a new warm template even if a matching one exists.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
pub struct BuildTestGuestArgs {
    /// Templates directory [default: the agent's default templates_dir].
    #[arg(long, env = "SHOESVZ_TEMPLATES_DIR")]
    templates_dir: Option<PathBuf>,
    /// Template name.
    #[arg(long, default_value = shoes_vz_guest_image::builder::DEFAULT_NAME)]
    name: String,
    /// Downloaded .deb files [default: <templates-dir>/.cache/debs].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The runner-agent binary [default: this workspace's target/{release,debug} build].
    #[arg(long, conflicts_with = "no_runner_agent")]
    runner_agent: Option<PathBuf>,
    /// Build without the runner-agent (reachable only with --dev-authorized-key).
    #[arg(long)]
    no_runner_agent: bool,
    /// The stand-in GitHub Actions runner cached at /usr/local/etc/runner-v2.336.0, where
    /// myshoes' setup script finds it offline [default: this workspace's build, if any].
    #[arg(long)]
    standin_runner: Option<PathBuf>,
    /// TEST ONLY: bake this authorized_keys file in for the `runner` user. Every runner of
    /// the image then shares its keys; never use such an image for real jobs.
    #[arg(long)]
    dev_authorized_key: Option<PathBuf>,
    /// TEST ONLY, with --dev-authorized-key: the guest's OpenSSH host key [default: a fresh one].
    #[arg(long, requires = "dev_authorized_key")]
    dev_host_key: Option<PathBuf>,
    /// Size of the runner's disk, in MiB.
    #[arg(long, default_value_t = 256)]
    disk_mib: u64,
    /// Build a new version even if one with the same inputs exists.
    #[arg(long)]
    force: bool,
    /// Keep older versions (an agent refuses two templates with the same name).
    #[arg(long)]
    keep_old_versions: bool,
}

pub async fn run(command: TemplateCommand, output: Output) -> anyhow::Result<()> {
    match command {
        TemplateCommand::BuildTestGuest(args) => build(args, output).await,
        TemplateCommand::Warm(args) => warm(args, output).await,
        TemplateCommand::ImportTart(args) => super::template_vz::import_tart(args, output).await,
        TemplateCommand::Create(args) => super::template_vz::create(args, output).await,
        TemplateCommand::WarmVz(args) => super::template_vz::warm_vz(args, output).await,
    }
}

async fn build(args: BuildTestGuestArgs, output: Output) -> anyhow::Result<()> {
    let templates_dir = args
        .templates_dir
        .unwrap_or_else(|| AgentConfig::default().templates_dir);
    let mut options = BuildOptions::new(&templates_dir);
    options.name = args.name;
    if let Some(cache_dir) = args.cache_dir {
        options.cache_dir = cache_dir;
    }
    options.disk_bytes = args.disk_mib.saturating_mul(1024 * 1024);
    options.force = args.force;
    options.keep_old_versions = args.keep_old_versions;
    options.runner_agent = if args.no_runner_agent {
        None
    } else {
        Some(args.runner_agent.or_else(find_runner_agent).context(
            "no runner-agent binary: build it (`cargo build -p shoes-vz-runner-agent`), pass \
             --runner-agent PATH, or --no-runner-agent with --dev-authorized-key",
        )?)
    };
    options.standin_runner = args.standin_runner.or_else(find_standin_runner);
    if options.standin_runner.is_none() {
        eprintln!(
            "note: no stand-in runner (`cargo build -p shoes-vz-standin-runner`): the guest has no runner cache, so myshoes' setup script would download the real runner"
        );
    }
    let mut dev_host_public_key = None;
    if let Some(path) = &args.dev_authorized_key {
        let authorized_key = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let host_key_openssh = match &args.dev_host_key {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            None => {
                let key = ssh::generate_ed25519()?;
                let public = ssh::authorized_key_line(key.public_key());
                human!(output, "guest host key: {public}");
                dev_host_public_key = Some(public);
                key.to_openssh(russh::keys::ssh_key::LineEnding::LF)?
                    .to_string()
            }
        };
        eprintln!("WARNING: building a TEST-ONLY image with baked SSH keys");
        options.dev_keys = Some(DevKeys {
            authorized_key,
            host_key_openssh,
        });
    } else if options.runner_agent.is_none() {
        anyhow::bail!(
            "an image without the runner-agent needs --dev-authorized-key to be reachable"
        );
    }
    let progress = Progress::new(&format!("test guest {}", options.name));
    progress.update("downloading packages and building (cached by its inputs)");
    let built = tokio::task::spawn_blocking(move || build_test_guest(&options)).await?;
    let built = match built {
        Ok(built) => built,
        Err(error) => {
            progress.finish("failed");
            return Err(error.into());
        }
    };
    let summary = format!(
        "{} {} {} in {:.1} s: {}",
        built.name,
        built.version,
        if built.built { "built" } else { "up to date" },
        built.elapsed.as_secs_f64(),
        built.dir.display()
    );
    progress.finish(if built.built { "built" } else { "up to date" });
    match output {
        Output::Table => println!("{summary}"),
        Output::Json => print_json(&serde_json::json!({
            "name": built.name,
            "version": built.version,
            "built": built.built,
            "dir": built.dir,
            "elapsed_ms": millis(built.elapsed),
            "dev_host_public_key": dev_host_public_key,
        }))?,
    }
    Ok(())
}

async fn warm(args: WarmArgs, output: Output) -> anyhow::Result<()> {
    let templates_dir = args
        .templates_dir
        .unwrap_or_else(|| AgentConfig::default().templates_dir);
    let templates = template::load_all(&templates_dir, "qemu")?;
    let base = templates.get(&args.name).with_context(|| {
        format!(
            "no qemu template named {:?} in {}",
            args.name,
            templates_dir.display()
        )
    })?;
    let progress = Progress::new(&format!("warm template of {}", args.name));
    progress.update("booting until SSH answers, then saving the VM's state");
    let warm = crate::qemu_templates::ensure_warm(
        base,
        args.vcpus,
        args.memory_mib,
        AgentConfig::default().qemu,
        Duration::from_secs(args.boot_timeout),
        args.force,
    )
    .await;
    let warm = match warm {
        Ok(warm) => warm,
        Err(error) => {
            progress.finish("failed");
            return Err(error);
        }
    };
    progress.finish(if warm.built { "built" } else { "up to date" });
    if output.is_json() {
        let measured = |value: serde_json::Value| warm.built.then_some(value);
        return print_json(&serde_json::json!({
            "name": warm.name,
            "built": warm.built,
            "dir": warm.dir,
            "boot_to_ssh_ms": measured(millis(warm.boot_to_ssh).into()),
            "save_ms": measured(millis(warm.save).into()),
            "state_bytes": measured(warm.state_bytes.into()),
        }));
    }
    if warm.built {
        println!(
            "{} built: boot to SSH {:.2} s, state saved in {:.2} s ({} MB): {}",
            warm.name,
            warm.boot_to_ssh.as_secs_f64(),
            warm.save.as_secs_f64(),
            warm.state_bytes >> 20,
            warm.dir.display()
        );
    } else {
        println!("{} up to date: {}", warm.name, warm.dir.display());
    }
    Ok(())
}
