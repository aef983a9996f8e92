//! The macOS packaging files exist and say what docs/macos.md promises (a Mac runs them).

use std::path::PathBuf;

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

#[test]
fn entitlements_grant_virtualization_and_nothing_else() {
    let text = repo_file("packaging/macos/shoes-vz-agent.entitlements");
    assert!(text.starts_with("<?xml"));
    assert!(
        text.contains("<key>com.apple.security.virtualization</key>\n\t<true/>"),
        "{text}"
    );
    assert_eq!(
        text.matches("<key>").count(),
        1,
        "only the one entitlement: {text}"
    );
}

#[test]
fn sign_script_uses_those_entitlements_and_verifies() {
    let text = repo_file("packaging/macos/sign-agent.sh");
    assert!(text.contains("packaging/macos/shoes-vz-agent.entitlements"));
    assert!(text.contains("codesign --verify"));
    assert!(text.contains("CODESIGN_IDENTITY:--"), "ad hoc by default");
}
