//! One policy for tests whose prerequisite is missing: `SKIPPED: …` on stderr outside CI, a
//! panic (a failed test) when the `CI` environment variable says this is CI.

/// The environment variable CI systems set (GitHub Actions, and `.ci/run` when it is unset).
pub const CI_VAR: &str = "CI";

/// Whether this process runs in CI: `CI` is set, non-empty, and not `0` or `false`.
pub fn running_in_ci() -> bool {
    let value = std::env::var_os(CI_VAR);
    // A value that is not UTF-8 is still a value someone set on purpose.
    is_ci(value.as_deref().map(|v| v.to_str().unwrap_or("set")))
}

/// A test cannot run because `what` is missing; `how_to_get_it` tells the reader what to do.
///
/// Outside CI this prints `SKIPPED: <what>; <how_to_get_it>` to stderr and the caller returns.
/// In CI it panics with `prerequisite missing in CI: …`, failing the test.
#[track_caller]
pub fn prerequisite_missing(what: &str, how_to_get_it: &str) {
    prerequisite_missing_because(&format!("{what}; {how_to_get_it}"));
}

/// As [`prerequisite_missing`], for a reason that already says both what is missing and how to
/// get it (e.g. `"qemu-system-x86_64 is not installed; run .ci/qemu-deps.sh"`).
#[track_caller]
pub fn prerequisite_missing_because(reason: &str) {
    let ci = std::env::var_os(CI_VAR);
    let ci = ci.as_deref().map(|v| v.to_str().unwrap_or("set"));
    eprintln!("{}", skip_line_or_fail(ci, reason));
}

/// The policy with the `CI` value passed in, so it is testable without touching the process
/// environment (tests run in parallel threads of one process).
#[track_caller]
fn skip_line_or_fail(ci: Option<&str>, reason: &str) -> String {
    if is_ci(ci) {
        panic!("prerequisite missing in CI: {reason} (outside CI this test would be SKIPPED)");
    }
    format!("SKIPPED: {reason}")
}

fn is_ci(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some(value) => !value.eq_ignore_ascii_case("false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_ci_the_line_says_skipped_what_and_how() {
        for ci in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("FALSE"),
            Some(" "),
        ] {
            assert_eq!(
                skip_line_or_fail(ci, "go is not installed; run .ci/go-toolchain.sh"),
                "SKIPPED: go is not installed; run .ci/go-toolchain.sh",
                "CI={ci:?}"
            );
        }
    }

    #[test]
    #[should_panic(
        expected = "prerequisite missing in CI: go is not installed; run .ci/go-toolchain.sh"
    )]
    fn in_ci_a_missing_prerequisite_fails_the_test() {
        skip_line_or_fail(Some("1"), "go is not installed; run .ci/go-toolchain.sh");
    }

    #[test]
    fn every_other_value_means_ci() {
        for value in ["1", "true", "TRUE", "yes", "set"] {
            assert!(is_ci(Some(value)), "{value}");
            let outcome = std::panic::catch_unwind(|| skip_line_or_fail(Some(value), "x; y"));
            assert!(outcome.is_err(), "CI={value} must fail, not skip");
        }
    }
}
