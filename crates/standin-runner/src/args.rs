//! `Runner.Listener`'s command line (Runner.Common/CommandLineParser.cs and
//! Runner.Listener/CommandSettings.cs), parsed the same way:
//! - words before the first `--name` are commands (`configure`, `run`, `remove`, `warmup`);
//! - `--name value` is an argument when the next word does not start with `-`, otherwise
//!   `--name` is a flag; the first value of an argument wins, extra values are ignored;
//! - names are case-insensitive; a missing argument may come from the environment as
//!   `ACTIONS_RUNNER_INPUT_<NAME>`;
//! - unknown commands, flags and arguments are reported (on stderr) but do not fail.

use std::collections::{BTreeMap, BTreeSet};

/// Arguments whose values are secrets: never printed, traced or recorded.
pub const SECRET_ARGS: &[&str] = &["token", "pat", "windowslogonpassword", "jitconfig"];

const GENERIC_FLAGS: &[&str] = &["help", "version", "commit", "check"];

/// Valid flags and arguments of each command (CommandSettings.cs:32-54 and the rest of its
/// table).
const VALID_OPTIONS: &[(&str, &[&str])] = &[
    (
        "configure",
        &[
            "disableupdate",
            "ephemeral",
            "generateserviceconfig",
            "replace",
            "runasservice",
            "unattended",
            "no-default-labels",
            "auth",
            "labels",
            "monitorsocketaddress",
            "name",
            "pat",
            "runnergroup",
            "token",
            "url",
            "username",
            "windowslogonaccount",
            "windowslogonpassword",
            "work",
        ],
    ),
    ("remove", &["token", "pat", "local"]),
    ("run", &["once", "jitconfig", "startuptype"]),
    ("warmup", &[]),
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub commands: Vec<String>,
    /// Lower-cased.
    pub flags: BTreeSet<String>,
    /// Lower-cased name → value.
    args: BTreeMap<String, String>,
}

impl CommandLine {
    pub fn parse<S: AsRef<str>>(argv: &[S]) -> Self {
        let mut line = CommandLine::default();
        let mut seen_option = false;
        let mut scope: Option<String> = None;
        for arg in argv.iter().map(AsRef::as_ref) {
            seen_option = seen_option || arg.starts_with("--");
            if arg == "/?" {
                line.flags.insert("help".into());
            } else if !seen_option {
                line.commands.push(arg.trim().to_string());
            } else if arg.starts_with("--") && arg.len() > 2 {
                // Two options in a row: the previous one was a flag.
                if let Some(previous) = scope.take() {
                    line.flags.insert(previous);
                }
                scope = Some(arg[2..].trim().to_ascii_lowercase());
            } else if !arg.starts_with('-') {
                // The first value wins: for `--a v1 --a v2` the second `--a` keeps waiting
                // (and ends up a flag), as upstream's parser does. A second value for one
                // argument (`--a v1 v2`) is ignored.
                if let Some(name) = scope.as_ref() {
                    if !line.args.contains_key(name) {
                        line.args.insert(name.clone(), arg.to_string());
                        scope = None;
                    }
                }
            }
            // `-` and `--` alone are ignored.
        }
        if let Some(last) = scope {
            line.flags.insert(last);
        }
        line
    }

    pub fn is_command(&self, name: &str) -> bool {
        self.commands
            .first()
            .is_some_and(|c| c.eq_ignore_ascii_case(name))
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name.to_ascii_lowercase())
    }

    /// The argument's value from the command line, else `ACTIONS_RUNNER_INPUT_<NAME>`;
    /// empty values count as missing.
    pub fn arg(&self, name: &str) -> Option<String> {
        let key = name.to_ascii_lowercase();
        if let Some(value) = self.args.get(&key).filter(|v| !v.is_empty()) {
            return Some(value.clone());
        }
        let variable = format!("ACTIONS_RUNNER_INPUT_{}", name.to_ascii_uppercase());
        std::env::var(variable)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// Unknown commands; else the flags and arguments the command does not take.
    pub fn unknowns(&self) -> Vec<String> {
        let valid = |command: &str| {
            VALID_OPTIONS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(command))
                .map(|(_, options)| *options)
        };
        let unknown_commands: Vec<String> = self
            .commands
            .iter()
            .filter(|c| valid(c).is_none())
            .cloned()
            .collect();
        if !unknown_commands.is_empty() {
            return unknown_commands;
        }
        let mut unknown = Vec::new();
        for command in &self.commands {
            let options = valid(command).unwrap_or(&[]);
            let known = |name: &String| options.contains(&name.as_str());
            unknown.extend(
                self.flags
                    .iter()
                    .filter(|f| !known(f) && !GENERIC_FLAGS.contains(&f.as_str()))
                    .cloned(),
            );
            unknown.extend(self.args.keys().filter(|a| !known(a)).cloned());
        }
        unknown
    }

    /// The upstream warning for [`Self::unknowns`], if any.
    pub fn unknowns_warning(&self) -> Option<String> {
        let unknown = self.unknowns();
        if unknown.is_empty() {
            return None;
        }
        let list = unknown.join(", ");
        let usage = ".\\config.cmd --help or ./config.sh --help";
        Some(match self.commands.first() {
            Some(command) if VALID_OPTIONS.iter().any(|(n, _)| n == command) => format!(
                "Unrecognized command-line input arguments for command {command}: '{list}'. For usage refer to: {usage}"
            ),
            _ => format!(
                "This command does not recognize the command-line input arguments: '{list}'. For usage refer to: {usage}"
            ),
        })
    }
}

/// `argv` with the values of secret arguments replaced by `***`, for records and traces.
pub fn masked<S: AsRef<str>>(argv: &[S]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut mask_next = false;
    for arg in argv.iter().map(AsRef::as_ref) {
        if mask_next && !arg.starts_with('-') {
            out.push("***".to_string());
            mask_next = false;
            continue;
        }
        mask_next = arg
            .strip_prefix("--")
            .is_some_and(|name| SECRET_ARGS.contains(&name.to_ascii_lowercase().as_str()));
        out.push(arg.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_myshoes_configure_line() {
        let line = CommandLine::parse(&[
            "configure",
            "--unattended",
            "--url",
            "https://github.com/example-org",
            "--token",
            "AAAA",
            "--name",
            "myshoes-1",
            "--labels",
            "myshoes,dependabot",
            "--ephemeral",
        ]);
        assert!(line.is_command("configure"));
        assert!(line.flag("unattended") && line.flag("ephemeral"));
        assert_eq!(
            line.arg("url").as_deref(),
            Some("https://github.com/example-org")
        );
        assert_eq!(line.arg("token").as_deref(), Some("AAAA"));
        assert_eq!(line.arg("labels").as_deref(), Some("myshoes,dependabot"));
        assert!(line.unknowns().is_empty(), "{:?}", line.unknowns());
    }

    #[test]
    fn flags_values_and_oddities_follow_upstream() {
        let line = CommandLine::parse(&[
            "run",
            "--Once",
            "--startuptype",
            "service",
            "extra",
            "--x",
            "1",
            "--x",
            "2",
            "-",
            "--jitconfig",
        ]);
        assert!(line.is_command("RUN"));
        assert!(line.flag("once"));
        assert_eq!(line.arg("StartupType").as_deref(), Some("service"));
        assert_eq!(line.arg("x").as_deref(), Some("1"), "the first value wins");
        assert!(line.flag("jitconfig"), "a trailing option is a flag");
        // A value starting with `-` is not a value: `--token -x` makes `--token` a flag.
        let dashed = CommandLine::parse(&["configure", "--token", "-abc", "--url", "u"]);
        assert_eq!(dashed.arg("token"), None);
        assert_eq!(dashed.arg("url").as_deref(), Some("u"));
    }

    #[test]
    fn unknown_options_are_reported_per_command() {
        let line = CommandLine::parse(&["run", "--startuptype", "service", "--bogus", "--help"]);
        assert_eq!(line.unknowns(), ["bogus"]);
        let warning = line.unknowns_warning().expect("warning");
        assert!(
            warning
                .starts_with("Unrecognized command-line input arguments for command run: 'bogus'"),
            "{warning}"
        );
        let bad = CommandLine::parse(&["frobnicate"]);
        assert_eq!(bad.unknowns(), ["frobnicate"]);
        assert!(bad
            .unknowns_warning()
            .is_some_and(|w| w.starts_with("This command does not recognize")));
    }

    #[test]
    fn secrets_are_masked() {
        let argv = [
            "configure",
            "--token",
            "SECRET1",
            "--url",
            "u",
            "--PAT",
            "SECRET2",
        ];
        let shown = masked(&argv).join(" ");
        assert_eq!(shown, "configure --token *** --url u --PAT ***");
    }
}
