//! The multi-call entry: the program is chosen by the base name of `argv[0]`, and the runner
//! root is the parent of the directory `argv[0]` is in (as upstream derives it from its
//! assembly's directory). Under its own name the binary lays out trees.

use crate::layout::{layout, BinaryInstall, LayoutOptions};
use std::path::{Path, PathBuf};

/// Runs the program `argv[0]` names; returns the exit code.
pub fn dispatch(argv: &[String]) -> u8 {
    let argv0 = argv.first().map(String::as_str).unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    match name {
        "Runner.Listener" | "Runner.Worker" => {
            let Some(root) = runner_root(argv0) else {
                eprintln!(
                    "{name} (shoes-vz stand-in): cannot find the runner directory from {argv0}"
                );
                return 1;
            };
            if name == "Runner.Listener" {
                crate::listener::main(&root, argv)
            } else {
                crate::worker::main(&root, argv)
            }
        }
        "node" => crate::node::main(argv),
        _ => own_command(argv),
    }
}

/// `<root>/bin/<program>` → `<root>`, following symlinks of the directory (not of the
/// program: a symlinked binary still belongs to the tree it is linked from).
pub fn runner_root(argv0: &str) -> Option<PathBuf> {
    let invoked = if argv0.contains('/') {
        PathBuf::from(argv0)
    } else {
        // Found through PATH: only the binary's own location is known.
        std::env::current_exe().ok()?
    };
    let dir = invoked.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = std::fs::canonicalize(dir.unwrap_or(Path::new("."))).ok()?;
    Some(dir.parent().unwrap_or(&dir).to_path_buf())
}

const USAGE: &str = "\
shoes-vz-standin-runner: a stand-in for the GitHub Actions runner 2.336.0 (no network).

Usage:
  shoes-vz-standin-runner layout DEST [--link copy|hardlink|symlink] [--owner UID:GID]
      Writes a runner tree (config.sh, run.sh, bin/Runner.Listener, ...) into DEST.

Installed in a tree, the binary is bin/Runner.Listener, bin/Runner.Worker and
externals/node20/bin/node; it acts as the program it is started as.
Drop a job as DEST/_standin/job.json: {\"name\": \"build\", \"seconds\": 12, \"result\": \"Succeeded\"}";

fn own_command(argv: &[String]) -> u8 {
    let args = argv.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("layout") => layout_command(&args[1..]),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    }
}

fn layout_command(args: &[String]) -> u8 {
    let mut dest = None;
    let mut options = LayoutOptions::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--link" => {
                options.binaries = match rest.next().map(String::as_str) {
                    Some("copy") => BinaryInstall::Copy,
                    Some("hardlink") => BinaryInstall::HardLink,
                    Some("symlink") => BinaryInstall::Symlink,
                    _ => return usage_error("--link takes copy, hardlink or symlink"),
                }
            }
            "--owner" => {
                let parsed = rest.next().and_then(|v| {
                    let (uid, gid) = v.split_once(':')?;
                    Some((uid.parse().ok()?, gid.parse().ok()?))
                });
                match parsed {
                    Some(owner) => options.owner = Some(owner),
                    None => return usage_error("--owner takes UID:GID (numbers)"),
                }
            }
            _ if dest.is_none() && !arg.starts_with('-') => dest = Some(PathBuf::from(arg)),
            _ => return usage_error(&format!("unexpected argument {arg}")),
        }
    }
    let Some(dest) = dest else {
        return usage_error("give the destination directory");
    };
    let binary = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("shoes-vz-standin-runner: cannot find its own binary: {error}");
            return 1;
        }
    };
    match layout(&dest, &binary, &options) {
        Ok(()) => {
            println!("runner tree written to {}", dest.display());
            0
        }
        Err(error) => {
            eprintln!(
                "shoes-vz-standin-runner: cannot lay out {}: {error}",
                dest.display()
            );
            1
        }
    }
}

fn usage_error(message: &str) -> u8 {
    eprintln!("shoes-vz-standin-runner layout: {message}\n\n{USAGE}");
    2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_the_parent_of_the_program_directory() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("runner/bin");
        std::fs::create_dir_all(&bin)?;
        let root = std::fs::canonicalize(dir.path().join("runner"))?;
        let argv0 = bin.join("Runner.Listener");
        assert_eq!(
            runner_root(&argv0.display().to_string()),
            Some(root.clone())
        );
        // Through a symlinked directory (as `mv`/links may leave it), the real one.
        std::os::unix::fs::symlink(dir.path().join("runner"), dir.path().join("link"))?;
        let linked = dir.path().join("link/bin/Runner.Worker");
        assert_eq!(runner_root(&linked.display().to_string()), Some(root));
        Ok(())
    }
}
