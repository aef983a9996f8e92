//! The runner's `.runner` settings file: JSON written by .NET with a UTF-8 byte order mark,
//! camelCase keys, and more fields than we use (unknown ones are ignored).

use serde::{Deserialize, Serialize};

const BOM: &str = "\u{feff}";
/// A real `.runner` is well under 1 KiB.
pub const MAX_DOT_RUNNER_BYTES: u64 = 64 * 1024;

/// Read from the runner's camelCase file; served (in `/status`) with snake_case names, which
/// it also reads back (the aliases), so a `/status` client can use this type too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase"))]
pub struct DotRunner {
    #[serde(default, alias = "agent_id")]
    pub agent_id: Option<i64>,
    #[serde(default, alias = "agent_name")]
    pub agent_name: Option<String>,
    #[serde(default, alias = "pool_id")]
    pub pool_id: Option<i64>,
    #[serde(default, alias = "pool_name")]
    pub pool_name: Option<String>,
    #[serde(default, rename(deserialize = "gitHubUrl"), alias = "github_url")]
    pub github_url: Option<String>,
    #[serde(default, alias = "work_folder")]
    pub work_folder: Option<String>,
    #[serde(default)]
    pub ephemeral: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error(".runner is not the runner's settings JSON (line {line}, column {column})")]
pub struct DotRunnerError {
    line: usize,
    column: usize,
}

pub fn parse(text: &str) -> Result<DotRunner, DotRunnerError> {
    let text = text.strip_prefix(BOM).unwrap_or(text);
    serde_json::from_str(text).map_err(|err| DotRunnerError {
        line: err.line(),
        column: err.column(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_bom_ignoring_unknown_fields() -> Result<(), DotRunnerError> {
        let json = r#"{
  "agentId": 27,
  "agentName": "shoes-vz-0123",
  "poolId": 1,
  "poolName": "Default",
  "serverUrl": "https://pipelines.example/abc/",
  "gitHubUrl": "https://github.com/example/repo",
  "workFolder": "_work",
  "ephemeral": true,
  "useV2Flow": true
}"#;
        for text in [json.to_owned(), format!("{BOM}{json}")] {
            let runner = parse(&text)?;
            assert_eq!(runner.agent_id, Some(27));
            assert_eq!(runner.agent_name.as_deref(), Some("shoes-vz-0123"));
            assert_eq!(runner.pool_id, Some(1));
            assert_eq!(
                runner.github_url.as_deref(),
                Some("https://github.com/example/repo")
            );
            assert_eq!(runner.ephemeral, Some(true));
        }
        Ok(())
    }

    #[test]
    fn the_status_form_reads_back() -> Result<(), serde_json::Error> {
        let runner = DotRunner {
            agent_id: Some(1),
            agent_name: Some("a".into()),
            pool_id: Some(2),
            pool_name: Some("p".into()),
            github_url: Some("https://github.com/o/r".into()),
            work_folder: Some("_work".into()),
            ephemeral: Some(true),
        };
        let json = serde_json::to_string(&runner)?;
        assert!(
            json.contains("\"github_url\"") && json.contains("\"agent_name\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<DotRunner>(&json)?, runner);
        Ok(())
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("\u{feff}not json").is_err());
        assert!(parse("").is_err());
    }
}
