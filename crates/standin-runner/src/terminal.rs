//! The runner's console (Runner.Common/Terminal.cs): lines on stdout, errors on stderr, and
//! the same lines traced to the `_diag` log by source `Terminal`. Success marks (`√ …`) and
//! section headers are printed but not traced, as upstream does.

use crate::diag::{DiagLog, Level};
use std::io::Write;

pub struct Terminal {
    diag: Option<DiagLog>,
    diag_failed: bool,
}

impl Terminal {
    /// A terminal that also traces to `diag` (none: console only).
    pub fn new(diag: Option<DiagLog>) -> Self {
        Self {
            diag,
            diag_failed: false,
        }
    }

    /// `WriteLine`: stdout, traced as `WRITE LINE: <line>`.
    pub fn write_line(&mut self, line: &str) {
        self.trace(Level::Info, &format!("WRITE LINE: {line}"));
        print_out(&format!("{line}\n"));
    }

    /// `WriteError`: stderr, traced as `WRITE ERROR: <line>`.
    pub fn write_error(&mut self, line: &str) {
        self.trace(Level::Error, &format!("WRITE ERROR: {line}"));
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }

    /// `WriteSuccessMessage`: `√ <message>` on stdout, not traced.
    pub fn success(&mut self, message: &str) {
        print_out(&format!("√ {message}\n"));
    }

    /// `WriteSection`: an empty line, `# <title>`, an empty line; not traced.
    pub fn section(&mut self, title: &str) {
        print_out(&format!("\n# {title}\n\n"));
    }

    /// A trace line only (source `Runner`, or the one given).
    pub fn trace_info(&mut self, source: &str, message: &str) {
        self.trace_from(Level::Info, source, message);
    }

    fn trace(&mut self, level: Level, message: &str) {
        self.trace_from(level, "Terminal", message);
    }

    fn trace_from(&mut self, level: Level, source: &str, message: &str) {
        let Some(diag) = self.diag.as_mut() else {
            return;
        };
        if let Err(error) = diag.trace(level, source, message) {
            // Said once: a full disk should not flood the console.
            if !self.diag_failed {
                self.diag_failed = true;
                let _ = writeln!(
                    std::io::stderr(),
                    "stand-in runner: cannot write {}: {error}",
                    diag.path().display()
                );
            }
        }
    }
}

fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the service host went away) must not end the runner.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
