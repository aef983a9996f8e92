//! The QEMU test guest as the local cluster, the benchmarks and the end-to-end tests use it:
//! built on first use (cached by its inputs), with this workspace's runner-agent, plus its
//! warm template.

use shoes_vz_agent::config::QemuConfig;
use shoes_vz_agent::hypervisor::qemu::warm::{make_warm_template, WarmOptions, WarmTemplate};
use shoes_vz_agent::hypervisor::qemu::QemuBackend;
use shoes_vz_agent::template;
use shoes_vz_guest_config::ApiToken;
use shoes_vz_guest_image::{
    build_test_guest, find_runner_agent, find_standin_runner, BuildOptions, TemplateDir,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The runner-agent binary for the guest (`SHOESVZ_RUNNER_AGENT` overrides).
pub fn runner_agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(found) = find_runner_agent() {
        return Ok(found);
    }
    crate::workspace_bin::find_or_build(
        "shoes-vz-runner-agent",
        "shoes-vz-runner-agent",
        "SHOESVZ_RUNNER_AGENT",
    )
}

/// The stand-in GitHub Actions runner cached in the guest (`SHOESVZ_STANDIN_RUNNER`
/// overrides), so myshoes' setup script runs there offline.
pub fn standin_runner_binary() -> anyhow::Result<PathBuf> {
    if let Some(found) = find_standin_runner() {
        return Ok(found);
    }
    crate::workspace_bin::find_or_build(
        "shoes-vz-standin-runner",
        "shoes-vz-standin-runner",
        "SHOESVZ_STANDIN_RUNNER",
    )
}

/// Builds the test guest into `templates_dir` unless an up-to-date one is there.
pub async fn ensure_test_guest(templates_dir: &Path) -> anyhow::Result<TemplateDir> {
    let mut options = BuildOptions::new(templates_dir);
    options.runner_agent = Some(runner_agent_binary()?);
    options.standin_runner = Some(standin_runner_binary()?);
    let built = tokio::task::spawn_blocking(move || build_test_guest(&options)).await??;
    Ok(built)
}

/// Makes (or finds) the warm template of `base` for runners of `vcpus` and `memory_mib`.
pub async fn ensure_warm(
    base: &template::Template,
    vcpus: u32,
    memory_mib: u64,
    qemu: QemuConfig,
    boot_timeout: Duration,
    force: bool,
) -> anyhow::Result<WarmTemplate> {
    let backend = QemuBackend::new(qemu)?;
    let work = tempfile::tempdir()?;
    let (config_disk, guest_token) = if base.metadata.guest_agent.is_some() {
        let path = work.path().join("config.img");
        let token = write_throwaway_config_disk(&path, base)?;
        (Some(path), Some(token))
    } else {
        (None, None)
    };
    let options = WarmOptions {
        vcpus,
        memory_mib,
        config_disk,
        guest_token,
        boot_timeout,
        force,
    };
    Ok(make_warm_template(&backend, base, &options).await?)
}

/// A throwaway config disk for warming; returns the token that authorizes each restored
/// clone's `/refresh` (the warm template keeps it, mode 0600).
fn write_throwaway_config_disk(path: &Path, base: &template::Template) -> anyhow::Result<ApiToken> {
    let runner_dir = base
        .metadata
        .guest_agent
        .as_ref()
        .map_or(template::MYSHOES_RUNNER_DIR, |agent| {
            agent.runner_dir.as_str()
        });
    let (config, token) = shoes_vz_agent::runner::guest::throwaway_guest_config(
        "10.0.2.2",
        &base.metadata.ssh_user,
        runner_dir,
    )?;
    shoes_vz_guest_config::write_image(path, &config)?;
    Ok(token)
}
