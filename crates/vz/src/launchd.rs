//! `shoes-vz-agent install|uninstall`: the agent's LaunchDaemon plist, written to a directory
//! the caller names (`/Library/LaunchDaemons` in production, a temp dir in tests), and the
//! `launchctl` calls that load and unload it (macOS only; a typed error elsewhere).
//!
//! The agent runs as a normal user (`UserName`), never as root: since macOS 15 the VZ service
//! needs the starting user's unlocked login keychain, and VMs started as root fail with
//! "Failed to generate keypair" / VZ error -9 (tart#921, #1075, #1025, #1137; tart PR #1147;
//! tart docs/faq.md "Headless machines"; orchard's LaunchDaemon runs tart as `admin`). A
//! LaunchDaemon with `UserName` is still a daemon, so it is exempt from macOS 15's Local
//! Network privacy prompt (Apple TN3179). docs/macos.md §5 has the keychain steps.
//!
//! The plist is world-readable, so it carries no secret: the agent finds its config through
//! `SHOESVZ_AGENT_CONFIG`, and the token lives in that file (mode 0600) or in the agent's own
//! environment, never in ProgramArguments or EnvironmentVariables here.

use std::path::{Path, PathBuf};

pub const DEFAULT_LABEL: &str = "io.github.shoes-vz.agent";
pub const LAUNCH_DAEMONS_DIR: &str = "/Library/LaunchDaemons";
pub const DEFAULT_LOG_DIR: &str = "/var/log/shoes-vz";
pub const DEFAULT_CONFIG: &str = "/opt/myshoes/vz/agent.toml";
/// The agent's environment variable for its config file (see crates/agent/src/main.rs).
pub const CONFIG_ENV: &str = "SHOESVZ_AGENT_CONFIG";
/// Seconds launchd waits after SIGTERM before SIGKILL: room for the agent to stop its VMs
/// (guest stop timeout plus margin), instead of launchd's default 20.
pub const EXIT_TIMEOUT_SECS: u32 = 60;
/// Minimum seconds between restarts when the agent keeps exiting.
pub const THROTTLE_INTERVAL_SECS: u32 = 10;

/// Words that mark an environment variable or flag as secret; such a value never goes here.
const SECRET_WORDS: [&str; 5] = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    pub label: String,
    /// The (non-root) user the agent and its VMs run as: launchd's `UserName`.
    pub user_name: String,
    /// Absolute path of the (signed) `shoes-vz-agent` binary.
    pub program: PathBuf,
    /// Extra arguments after the program, e.g. `--log-format json`. Never secrets.
    pub arguments: Vec<String>,
    /// The agent's TOML config, passed as `SHOESVZ_AGENT_CONFIG`.
    pub config_path: PathBuf,
    /// `agent.log` (stdout) and `agent.err.log` (stderr) go here.
    pub log_dir: PathBuf,
    /// Extra, non-secret environment variables.
    pub environment: Vec<(String, String)>,
    pub working_directory: Option<PathBuf>,
}

impl DaemonSpec {
    pub fn new(program: PathBuf, config_path: PathBuf, user_name: &str) -> DaemonSpec {
        DaemonSpec {
            label: DEFAULT_LABEL.to_string(),
            user_name: user_name.to_string(),
            program,
            arguments: vec!["--log-format".to_string(), "json".to_string()],
            config_path,
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            environment: Vec::new(),
            working_directory: None,
        }
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.log_dir.join("agent.log")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.log_dir.join("agent.err.log")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchdError {
    #[error("invalid LaunchDaemon settings: {0}")]
    Invalid(String),
    #[error("{what} must not carry a secret ({name}); put the token in the agent's config file (mode 0600) instead")]
    Secret { what: &'static str, name: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("launchd exists only on macOS; this is {os}")]
    Unsupported { os: &'static str },
    #[error("`{command}` failed ({status}): {stderr}")]
    Launchctl {
        command: String,
        status: String,
        stderr: String,
    },
}

fn is_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 128
        && !label.starts_with('.')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A short macOS user name: letters, digits, '.', '_', '-', not starting with '-'.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

pub fn validate(spec: &DaemonSpec) -> Result<(), LaunchdError> {
    if spec.user_name == "root" {
        return Err(LaunchdError::Invalid(
            "the agent must not run as root: since macOS 15 VMs started as root fail (\"Failed to generate keypair\", VZ error -9); pass --user with the account that is logged in (auto-login) or whose login keychain is unlocked".into(),
        ));
    }
    if !valid_user_name(&spec.user_name) {
        return Err(LaunchdError::Invalid(format!(
            "user name {:?} is not a macOS short user name (letters, digits, '.', '_', '-')",
            spec.user_name
        )));
    }
    if !valid_label(&spec.label) {
        return Err(LaunchdError::Invalid(format!(
            "label {:?} must be reverse-DNS style: letters, digits, '.', '-', '_'",
            spec.label
        )));
    }
    for (what, path) in [
        ("program", &spec.program),
        ("config path", &spec.config_path),
        ("log directory", &spec.log_dir),
    ] {
        if !path.is_absolute() {
            return Err(LaunchdError::Invalid(format!(
                "{what} {} must be an absolute path (launchd has no working directory to resolve it)",
                path.display()
            )));
        }
    }
    for argument in &spec.arguments {
        if is_secret(argument) {
            return Err(LaunchdError::Secret {
                what: "ProgramArguments",
                name: argument.split('=').next().unwrap_or_default().to_string(),
            });
        }
    }
    for (name, _) in &spec.environment {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(LaunchdError::Invalid(format!(
                "environment variable name {name:?} must be A-Z, 0-9 and '_'"
            )));
        }
        if is_secret(name) {
            return Err(LaunchdError::Secret {
                what: "EnvironmentVariables",
                name: name.clone(),
            });
        }
        if name == CONFIG_ENV {
            return Err(LaunchdError::Invalid(format!(
                "{CONFIG_ENV} is set from config_path; do not list it again"
            )));
        }
    }
    Ok(())
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn string(key: &str, value: &str) -> String {
    format!(
        "\t<key>{}</key>\n\t<string>{}</string>\n",
        escape(key),
        escape(value)
    )
}

/// The plist XML for `spec`.
pub fn render(spec: &DaemonSpec) -> Result<String, LaunchdError> {
    validate(spec)?;
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n<dict>\n",
    );
    out.push_str(&string("Label", &spec.label));
    out.push_str(&string("UserName", &spec.user_name));
    // The user's groups too (staff, …), as a login would give them.
    out.push_str("\t<key>InitGroups</key>\n\t<true/>\n");
    out.push_str("\t<key>ProgramArguments</key>\n\t<array>\n");
    let program = spec.program.to_string_lossy();
    for argument in
        std::iter::once(program.as_ref()).chain(spec.arguments.iter().map(String::as_str))
    {
        out.push_str(&format!("\t\t<string>{}</string>\n", escape(argument)));
    }
    out.push_str("\t</array>\n\t<key>EnvironmentVariables</key>\n\t<dict>\n");
    let config = spec.config_path.to_string_lossy();
    let mut environment: Vec<(&str, &str)> = vec![(CONFIG_ENV, config.as_ref())];
    environment.extend(
        spec.environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for (name, value) in environment {
        out.push_str(&format!(
            "\t\t<key>{}</key>\n\t\t<string>{}</string>\n",
            escape(name),
            escape(value)
        ));
    }
    out.push_str("\t</dict>\n");
    // Restart whenever it exits, even with status 0 (the earlier Go agent exited 0 on a lost
    // stream and was never restarted).
    out.push_str("\t<key>KeepAlive</key>\n\t<true/>\n\t<key>RunAtLoad</key>\n\t<true/>\n");
    out.push_str(&format!(
        "\t<key>ThrottleInterval</key>\n\t<integer>{THROTTLE_INTERVAL_SECS}</integer>\n\t<key>ExitTimeOut</key>\n\t<integer>{EXIT_TIMEOUT_SECS}</integer>\n"
    ));
    out.push_str(&string(
        "StandardOutPath",
        &spec.stdout_path().to_string_lossy(),
    ));
    out.push_str(&string(
        "StandardErrorPath",
        &spec.stderr_path().to_string_lossy(),
    ));
    if let Some(dir) = &spec.working_directory {
        out.push_str(&string("WorkingDirectory", &dir.to_string_lossy()));
    }
    out.push_str("</dict>\n</plist>\n");
    Ok(out)
}

/// `<plist_dir>/<label>.plist`.
pub fn plist_path(plist_dir: &Path, label: &str) -> PathBuf {
    plist_dir.join(format!("{label}.plist"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    pub plist_path: PathBuf,
    /// False when an identical plist was already there.
    pub changed: bool,
    /// Things the operator should fix (not fatal).
    pub warnings: Vec<String>,
}

/// Writes the plist into `plist_dir` (mode 0644, as launchd requires for daemons) and creates
/// the log directory. Does not load it: call [`launchctl`] with [`LaunchctlAction::Bootstrap`].
pub fn install(spec: &DaemonSpec, plist_dir: &Path) -> Result<InstallOutcome, LaunchdError> {
    let text = render(spec)?;
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchdError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&spec.log_dir).map_err(io("create", &spec.log_dir))?;
    std::fs::create_dir_all(plist_dir).map_err(io("create", plist_dir))?;
    let path = plist_path(plist_dir, &spec.label);
    let changed = match std::fs::read_to_string(&path) {
        Ok(existing) => existing != text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => {
            return Err(LaunchdError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    if changed {
        crate::fsutil::write_atomic(&path, text.as_bytes()).map_err(io("write", &path))?;
    }
    set_plist_mode(&path).map_err(io("chmod 0644", &path))?;
    Ok(InstallOutcome {
        plist_path: path,
        changed,
        warnings: config_warnings(&spec.config_path),
    })
}

#[cfg(unix)]
fn set_plist_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn set_plist_mode(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The config may hold the agent token: it should exist and be readable by its owner only.
fn config_warnings(config: &Path) -> Vec<String> {
    match std::fs::metadata(config) {
        Err(_) => vec![format!(
            "{} does not exist yet; the agent will not start until it does",
            config.display()
        )],
        #[cfg(unix)]
        Ok(meta) => {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                vec![format!(
                    "{} is readable by other users; it may hold the agent token: chmod 600 it (owned by the agent's user)",
                    config.display()
                )]
            } else {
                Vec::new()
            }
        }
        #[cfg(not(unix))]
        Ok(_) => Vec::new(),
    }
}

/// Removes the plist; true if there was one. Unload it first ([`LaunchctlAction::Bootout`]).
pub fn uninstall(label: &str, plist_dir: &Path) -> Result<bool, LaunchdError> {
    if !valid_label(label) {
        return Err(LaunchdError::Invalid(format!(
            "label {label:?} is not valid"
        )));
    }
    let path = plist_path(plist_dir, label);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LaunchdError::Io {
            action: "remove",
            path,
            source,
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchctlAction {
    /// Load and start the daemon from its plist.
    Bootstrap,
    /// Stop and unload it.
    Bootout,
    /// Restart it in place (`-k` kills the running instance first).
    Kickstart,
}

/// The `launchctl` argv for `action` (system domain: the agent runs as root).
pub fn launchctl_args(action: LaunchctlAction, label: &str, plist: &Path) -> Vec<String> {
    let target = format!("system/{label}");
    match action {
        LaunchctlAction::Bootstrap => vec![
            "bootstrap".into(),
            "system".into(),
            plist.to_string_lossy().into_owned(),
        ],
        LaunchctlAction::Bootout => vec!["bootout".into(), target],
        LaunchctlAction::Kickstart => vec!["kickstart".into(), "-k".into(), target],
    }
}

/// Runs `launchctl` (blocking; a few milliseconds). Off macOS: [`LaunchdError::Unsupported`].
pub fn launchctl(action: LaunchctlAction, label: &str, plist: &Path) -> Result<(), LaunchdError> {
    let args = launchctl_args(action, label, plist);
    run_launchctl(&args)
}

#[cfg(target_os = "macos")]
fn run_launchctl(args: &[String]) -> Result<(), LaunchdError> {
    let output = std::process::Command::new("/bin/launchctl")
        .args(args)
        .output()
        .map_err(|source| LaunchdError::Io {
            action: "run",
            path: PathBuf::from("/bin/launchctl"),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(LaunchdError::Launchctl {
        command: format!("launchctl {}", args.join(" ")),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr)
            .trim()
            .chars()
            .take(500)
            .collect(),
    })
}

#[cfg(not(target_os = "macos"))]
fn run_launchctl(_args: &[String]) -> Result<(), LaunchdError> {
    Err(LaunchdError::Unsupported {
        os: std::env::consts::OS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &Path) -> DaemonSpec {
        let mut spec = DaemonSpec::new(
            PathBuf::from("/usr/local/bin/shoes-vz-agent"),
            root.join("agent.toml"),
            "runner",
        );
        spec.log_dir = root.join("logs");
        spec
    }

    #[test]
    fn renders_a_keepalive_daemon_with_logs_and_the_config_in_the_environment() {
        let text = render(&spec(Path::new("/opt/x"))).expect("render");
        for needle in [
            "<key>Label</key>\n\t<string>io.github.shoes-vz.agent</string>",
            "<key>UserName</key>\n\t<string>runner</string>",
            "<key>InitGroups</key>\n\t<true/>",
            "<string>/usr/local/bin/shoes-vz-agent</string>\n\t\t<string>--log-format</string>\n\t\t<string>json</string>",
            "<key>SHOESVZ_AGENT_CONFIG</key>\n\t\t<string>/opt/x/agent.toml</string>",
            "<key>KeepAlive</key>\n\t<true/>",
            "<key>RunAtLoad</key>\n\t<true/>",
            "<key>ExitTimeOut</key>\n\t<integer>60</integer>",
            "<key>StandardOutPath</key>\n\t<string>/opt/x/logs/agent.log</string>",
            "<key>StandardErrorPath</key>\n\t<string>/opt/x/logs/agent.err.log</string>",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.starts_with("<?xml"));
        assert!(text.ends_with("</plist>\n"));
        assert!(!text.to_lowercase().contains("token"));
    }

    #[test]
    fn values_are_xml_escaped() {
        let mut s = spec(Path::new("/opt/a&b"));
        s.environment = vec![("RUST_LOG".into(), "info,<x>=debug".into())];
        let text = render(&s).expect("render");
        assert!(text.contains("/opt/a&amp;b/agent.toml"));
        assert!(text.contains("info,&lt;x&gt;=debug"));
    }

    #[test]
    fn secrets_and_relative_paths_are_refused() {
        let root = Path::new("/opt/x");
        let mut s = spec(root);
        s.environment = vec![("SHOESVZ_AGENT_TOKEN".into(), "abc".into())];
        let error = render(&s).expect_err("token in env");
        assert!(matches!(error, LaunchdError::Secret { .. }));
        assert!(
            !error.to_string().contains("abc"),
            "the value never shows up"
        );
        let mut s = spec(root);
        s.arguments = vec!["--token=abc".into()];
        let error = render(&s).expect_err("token in argv").to_string();
        assert!(
            error.contains("--token") && !error.contains("abc"),
            "{error}"
        );
        let mut s = spec(root);
        s.program = "shoes-vz-agent".into();
        assert!(matches!(render(&s), Err(LaunchdError::Invalid(_))));
        let mut s = spec(root);
        s.label = "bad label".into();
        assert!(matches!(render(&s), Err(LaunchdError::Invalid(_))));
        let mut s = spec(root);
        s.user_name = "root".into();
        let error = render(&s).expect_err("root").to_string();
        assert!(
            error.contains("must not run as root") && error.contains("--user"),
            "{error}"
        );
        for bad in ["", "-x", "a b", "a/b"] {
            let mut s = spec(root);
            s.user_name = bad.into();
            assert!(
                matches!(render(&s), Err(LaunchdError::Invalid(_))),
                "{bad:?}"
            );
        }
        let mut s = spec(root);
        s.environment = vec![(CONFIG_ENV.into(), "/elsewhere".into())];
        assert!(matches!(render(&s), Err(LaunchdError::Invalid(_))));
    }

    #[test]
    fn install_is_idempotent_and_uninstall_removes() {
        let root = tempfile::tempdir().expect("tempdir");
        let daemons = root.path().join("LaunchDaemons");
        let s = spec(root.path());
        let first = install(&s, &daemons).expect("install");
        assert!(first.changed);
        assert_eq!(
            first.plist_path,
            daemons.join("io.github.shoes-vz.agent.plist")
        );
        assert!(root.path().join("logs").is_dir());
        assert!(first.warnings.iter().any(|w| w.contains("does not exist")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.plist_path)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
            std::fs::write(&s.config_path, "token = \"x\"\n").expect("config");
            std::fs::set_permissions(&s.config_path, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        let again = install(&s, &daemons).expect("again");
        assert!(!again.changed);
        #[cfg(unix)]
        assert!(
            again.warnings.iter().any(|w| w.contains("chmod 600")),
            "{:?}",
            again.warnings
        );
        assert!(uninstall(&s.label, &daemons).expect("uninstall"));
        assert!(!first.plist_path.exists());
        assert!(!uninstall(&s.label, &daemons).expect("already gone"));
    }

    #[test]
    fn launchctl_argv_and_platform_gate() {
        let plist = Path::new("/Library/LaunchDaemons/l.plist");
        assert_eq!(
            launchctl_args(LaunchctlAction::Bootstrap, "l", plist),
            vec!["bootstrap", "system", "/Library/LaunchDaemons/l.plist"]
        );
        assert_eq!(
            launchctl_args(LaunchctlAction::Bootout, "l", plist),
            vec!["bootout", "system/l"]
        );
        assert_eq!(
            launchctl_args(LaunchctlAction::Kickstart, "l", plist),
            vec!["kickstart", "-k", "system/l"]
        );
        #[cfg(not(target_os = "macos"))]
        assert!(matches!(
            launchctl(LaunchctlAction::Bootstrap, "l", plist),
            Err(LaunchdError::Unsupported { .. })
        ));
    }
}
