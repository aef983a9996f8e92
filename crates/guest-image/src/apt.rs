//! Debian packages through the system's own apt: candidate versions from `apt-cache show`,
//! `.deb` files from `apt-get download` into a cache directory, contents via `dpkg-deb -x`.
//! Nothing is installed on the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("cannot run {tool}: the test guest is built from Debian packages, so it needs a Debian or Ubuntu host with apt and dpkg")]
    Tool {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("apt knows no package {0}: run `apt-get update`")]
    NoCandidate(String),
    #[error("`{command}` failed ({status}): {stderr}; if a package version has left the mirror, run `apt-get update`")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`apt-get download` produced no .deb file for {0}")]
    NothingDownloaded(String),
    #[error("cannot use the package cache {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One package version as apt sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Names from `Pre-Depends` and `Depends` (the first of each alternative).
    pub depends: Vec<String>,
}

impl Package {
    /// The file name `apt-get download` gives this version (`:` of an epoch as `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }
}

/// The candidate versions of `names` (what `apt-get download NAME` would fetch), in one
/// `apt-cache` run: each run costs about a second of cache loading.
pub fn show(names: &[String]) -> Result<Vec<Package>, AptError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut command = Command::new("apt-cache");
    command.args(["show", "--no-all-versions"]).args(names);
    let text = run(&mut command, "apt-cache").map_err(|error| match error {
        AptError::Failed { .. } => AptError::NoCandidate(names.join(", ")),
        other => other,
    })?;
    names
        .iter()
        .map(|name| {
            text.split("\n\n")
                .find_map(|stanza| parse_stanza(name, stanza))
                .ok_or_else(|| AptError::NoCandidate(name.clone()))
        })
        .collect()
}

fn parse_stanza(name: &str, stanza: &str) -> Option<Package> {
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    let mut last: Option<&str> = None;
    for line in stanza.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            // Continuation of a folded field.
            if let Some(key) = last {
                if let Some(value) = fields.get_mut(key) {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key, value.trim().to_string());
            last = Some(key);
        }
    }
    if fields.get("Package").map(String::as_str) != Some(name) {
        return None;
    }
    let mut depends = Vec::new();
    for key in ["Pre-Depends", "Depends"] {
        if let Some(list) = fields.get(key) {
            for item in list.split(',') {
                let first = item.split('|').next().unwrap_or_default();
                let dep = first
                    .split(['(', ':', ' '])
                    .find(|s| !s.is_empty())
                    .unwrap_or_default();
                if !dep.is_empty() && !depends.iter().any(|d| d == dep) {
                    depends.push(dep.to_string());
                }
            }
        }
    }
    Some(Package {
        name: name.to_string(),
        version: fields.get("Version")?.clone(),
        architecture: fields.get("Architecture")?.clone(),
        depends,
    })
}

/// Downloads the packages missing from `cache_dir` (in one `apt-get` run); returns every
/// package's file, in order.
pub fn fetch(packages: &[Package], cache_dir: &Path) -> Result<Vec<PathBuf>, AptError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AptError::Io { path, source }
    };
    let targets: Vec<PathBuf> = packages
        .iter()
        .map(|p| cache_dir.join(p.deb_file_name()))
        .collect();
    let missing: Vec<String> = packages
        .iter()
        .zip(&targets)
        .filter(|(_, target)| !target.is_file())
        .map(|(p, _)| format!("{}={}", p.name, p.version))
        .collect();
    if missing.is_empty() {
        return Ok(targets);
    }
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    // Download into a private directory, then rename: a cancelled build leaves no partial .deb.
    let scratch = tempfile::tempdir_in(cache_dir).map_err(io(cache_dir))?;
    run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .args(&missing)
            .current_dir(scratch.path()),
        "apt-get",
    )?;
    for entry in std::fs::read_dir(scratch.path()).map_err(io(scratch.path()))? {
        let path = entry.map_err(io(scratch.path()))?.path();
        if let Some(name) = path.file_name() {
            let target = cache_dir.join(name);
            std::fs::rename(&path, &target).map_err(io(&target))?;
        }
    }
    if let Some(index) = targets.iter().position(|t| !t.is_file()) {
        let package = &packages[index];
        return Err(AptError::NothingDownloaded(format!(
            "{}={}",
            package.name, package.version
        )));
    }
    Ok(targets)
}

/// Unpacks a `.deb`'s files (not its scripts) under `dest`.
pub fn extract(deb: &Path, dest: &Path) -> Result<(), AptError> {
    run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest),
        "dpkg-deb",
    )?;
    Ok(())
}

fn run(command: &mut Command, tool: &'static str) -> Result<String, AptError> {
    let output = command
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| AptError::Tool { tool, source })?;
    if !output.status.success() {
        return Err(AptError::Failed {
            command: format!("{command:?}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_candidate_stanza_and_its_dependencies() {
        let text = "Package: dropbear-bin\nSource: dropbear\nVersion: 2022.83-1+deb12u3\n\
            Architecture: amd64\nPre-Depends: init-system-helpers (>= 1.54~)\n\
            Depends: libc6 (>= 2.34), libcrypt1 (>= 1:4.1.0),\n libtomcrypt1 (>= 1.18.2) | libfoo, zlib1g:amd64 (>= 1:1.1.4)\n\
            Description: x\n\nPackage: dropbear-bin\nVersion: 0\n";
        let package = text
            .split("\n\n")
            .find_map(|stanza| parse_stanza("dropbear-bin", stanza))
            .expect("parsed");
        assert_eq!(package.version, "2022.83-1+deb12u3");
        assert_eq!(
            package.depends,
            [
                "init-system-helpers",
                "libc6",
                "libcrypt1",
                "libtomcrypt1",
                "zlib1g"
            ]
        );
        assert_eq!(
            Package {
                version: "1:1.35.0-4".into(),
                ..package.clone()
            }
            .deb_file_name(),
            "dropbear-bin_1%3a1.35.0-4_amd64.deb"
        );
        assert!(parse_stanza("other", text).is_none());
    }
}
