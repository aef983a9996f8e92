//! Finding programs: `which`, and this project's other binaries (the guest's runner-agent,
//! myshoes' plugin) beside this program or in the checkout's target dir — built there with
//! cargo on first use when running from a checkout, as the README's quick start does.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// `name` from package `package`: `$env_override`, beside this executable, in
/// `target/{release,debug}`, else `cargo build --release -p package`.
pub fn find_or_build(name: &str, package: &str, env_override: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_override) {
        return Ok(path.into());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        candidates.extend(exe.ancestors().skip(1).take(2).map(|dir| dir.join(name)));
    }
    for profile in ["release", "debug"] {
        candidates.push(workspace.join("target").join(profile).join(name));
    }
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    anyhow::ensure!(
        workspace.join("Cargo.toml").is_file(),
        "no {name} binary found; set {env_override} to its path"
    );
    eprintln!("building {name} (first use) ...");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "--release", "-p", package])
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run cargo to build {name}; set {env_override} instead"))?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p {package} failed with {status}"
    );
    let built = workspace.join("target/release").join(name);
    anyhow::ensure!(
        built.is_file(),
        "cargo built no {name} at {}",
        built.display()
    );
    Ok(built)
}

/// `program` on `PATH`, or in the sbin directories a non-root `PATH` may lack.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
