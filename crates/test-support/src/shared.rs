//! The project's read-only shared material (`shared/`: notes, fixtures, the myshoes client kit).
//! It sits beside the checkout, on developers' machines and in CI alike.

use std::path::{Path, PathBuf};

/// Overrides where `shared/` is.
pub const SHARED_DIR_VAR: &str = "SHOESVZ_SHARED_DIR";

/// `SHOESVZ_SHARED_DIR` if set and non-empty, else `<workspace root>/../shared` if that is a
/// directory, else `None` (the caller reports a missing prerequisite).
pub fn shared_dir() -> Option<PathBuf> {
    resolve(
        std::env::var_os(SHARED_DIR_VAR).map(PathBuf::from),
        &workspace_root(),
    )
}

/// The workspace root this crate was built from (`crates/test-support/../..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn resolve(from_env: Option<PathBuf>, workspace_root: &Path) -> Option<PathBuf> {
    if let Some(dir) = from_env.filter(|dir| !dir.as_os_str().is_empty()) {
        // Set on purpose: used as given, so a wrong value shows up as "not found" there.
        return Some(dir);
    }
    let beside = workspace_root.join("../shared");
    beside.is_dir().then_some(beside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_variable_wins() {
        let root = Path::new("/nonexistent-workspace");
        assert_eq!(
            resolve(Some("/elsewhere/shared".into()), root),
            Some(PathBuf::from("/elsewhere/shared"))
        );
    }

    #[test]
    fn otherwise_shared_beside_the_checkout_if_it_exists() {
        let outer = tempfile::tempdir().expect("tempdir");
        let checkout = outer.path().join("checkout");
        std::fs::create_dir(&checkout).expect("checkout dir");
        assert_eq!(resolve(None, &checkout), None, "no shared/ yet");
        assert_eq!(resolve(Some("".into()), &checkout), None, "empty is unset");
        std::fs::create_dir(outer.path().join("shared")).expect("shared dir");
        let found = resolve(None, &checkout).expect("found");
        assert!(found.is_dir());
        assert!(found.ends_with("checkout/../shared"), "{found:?}");
    }
}
