//! How a command prints: `--output table` (for people) or `--output json` (for scripts).
//!
//! One rule keeps `shoes-vz … --output json | jq` working: with `json`, stdout carries only
//! JSON (one document, or one object per line for streams); everything for people (progress,
//! notes, warnings) goes to stderr. With `table`, results and the lines around them go to
//! stdout as before, and warnings to stderr.

use std::io::Write;

/// How a command prints what it found (the global `--output`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Tables and sentences for people; `text` is the same (doctor's earlier name for it).
    #[default]
    #[value(alias = "text")]
    Table,
    /// JSON on stdout, people's lines on stderr.
    Json,
}

impl Output {
    pub fn is_json(self) -> bool {
        self == Output::Json
    }
}

/// A line for people: on stdout with `--output table`, on stderr with `--output json` (so
/// stdout stays parseable). Takes the output first, then `println!`'s arguments.
#[macro_export]
macro_rules! human {
    ($output:expr, $($arg:tt)*) => {
        if $crate::output::Output::is_json($output) {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}

/// One JSON document on stdout, indented (a command's single result).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_stdout_line(&text)
}

/// One JSON object on one line of stdout (streams: log chunks, one command's result each,
/// a long-running command's events), flushed so a reader sees it at once.
pub fn print_json_line(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    write_stdout_line(&text)
}

fn write_stdout_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn text_is_accepted_as_table_for_doctor_scripts() {
        assert_eq!(Output::from_str("text", true), Ok(Output::Table));
        assert_eq!(Output::from_str("table", true), Ok(Output::Table));
        assert_eq!(Output::from_str("json", true), Ok(Output::Json));
        assert!(Output::from_str("yaml", true).is_err());
    }
}
