//! `shoes-vz completions SHELL`, run as a user runs it: the bash script offers the CLI's
//! subcommands, and bash itself completes with it.

use std::process::Command;

fn completions(shell: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_shoes-vz"))
        .args(["completions", shell])
        .output()
        .expect("shoes-vz runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8 script")
}

/// The words offered at each level of the bash script (its `opts="…"` lines).
fn offered_words(script: &str) -> Vec<Vec<&str>> {
    script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("opts=\""))
        .map(|opts| opts.trim_end_matches('"').split_whitespace().collect())
        .collect()
}

#[test]
fn bash_completions_offer_the_subcommands() {
    let script = completions("bash");
    assert!(
        script.contains("complete -F"),
        "not a bash completion script"
    );
    let levels = offered_words(&script);
    let root = levels
        .iter()
        .find(|words| words.contains(&"--version"))
        .expect("the root level offers --version");
    for subcommand in [
        "dev",
        "runners",
        "bench",
        "template",
        "doctor",
        "completions",
    ] {
        assert!(
            root.contains(&subcommand),
            "root lacks {subcommand}: {root:?}"
        );
    }
    assert!(
        levels
            .iter()
            .any(|words| words.contains(&"list") && words.contains(&"delete")),
        "no level offers runners' list and delete"
    );
}

#[test]
fn bash_completes_a_prefix_for_real() {
    let script = completions("bash");
    // What bash calls on <TAB> after `shoes-vz ru`: it must offer `runners`.
    let probe = format!(
        "{script}\nCOMP_WORDS=(shoes-vz ru); COMP_CWORD=1\n_shoes__vz shoes-vz ru shoes-vz\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    );
    let output = match Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &probe])
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            shoes_vz_test_support::prerequisite_missing(
                &format!("bash cannot run ({error})"),
                "install bash (apt-get install bash)",
            );
            return;
        }
    };
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "runners");
}

#[test]
fn zsh_and_fish_scripts_name_the_binary() {
    assert!(completions("zsh").starts_with("#compdef shoes-vz"));
    assert!(completions("fish").contains("complete -c shoes-vz"));
}
