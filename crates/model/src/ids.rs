//! Identifiers, validated before they touch a path, a query or a log line.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every `cloud_id` shoes-vz issues starts with this (the earlier Go implementation's format).
pub const CLOUD_ID_PREFIX: &str = "shoes-vz-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {value:?} contains {bad:?}; use only letters, digits, '-', '_' and '.', not starting with '.' or '-'")]
    BadCharacter {
        kind: &'static str,
        value: String,
        bad: char,
    },
    #[error("{kind} {value:?} is not a shoes-vz id: expected 32 lowercase hex digits")]
    NotAnId { kind: &'static str, value: String },
    #[error("cloud_id {0:?} was not issued by shoes-vz: expected \"shoes-vz-\" followed by 32 hex digits")]
    NotACloudId(String),
}

/// Checks a name that becomes part of a path or a key: `[A-Za-z0-9._-]`, not starting with
/// `.` or `-` (so no `..`, no hidden files, no option-like names), at most `max` characters.
pub fn validate_name(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = value.chars().count();
    if len > max {
        return Err(IdError::TooLong { kind, len, max });
    }
    for (index, c) in value.chars().enumerate() {
        let allowed = c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let bad_first = index == 0 && matches!(c, '.' | '-');
        if !allowed || bad_first {
            return Err(IdError::BadCharacter {
                kind,
                value: value.chars().take(max).collect(),
                bad: c,
            });
        }
    }
    Ok(())
}

fn parse_hex_id(kind: &'static str, value: &str) -> Result<String, IdError> {
    let ok = value.len() == 32
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if ok {
        Ok(value.to_string())
    } else {
        Err(IdError::NotAnId {
            kind,
            value: value.chars().take(80).collect(),
        })
    }
}

macro_rules! hex_id {
    ($name:ident, $kind:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::new_v4().simple().to_string())
            }

            pub fn parse(value: &str) -> Result<Self, IdError> {
                parse_hex_id($kind, value).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

hex_id!(RunnerId, "runner id");
hex_id!(AgentId, "agent id");

impl RunnerId {
    pub fn cloud_id(&self) -> CloudId {
        CloudId(format!("{CLOUD_ID_PREFIX}{}", self.0))
    }
}

/// The id myshoes keeps for a runner: `shoes-vz-<runner id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloudId(String);

impl CloudId {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let not_ours = || IdError::NotACloudId(value.chars().take(80).collect());
        let rest = value.strip_prefix(CLOUD_ID_PREFIX).ok_or_else(not_ours)?;
        RunnerId::parse(rest).map_err(|_| not_ours())?;
        Ok(Self(value.to_string()))
    }

    pub fn runner_id(&self) -> RunnerId {
        RunnerId(self.0[CLOUD_ID_PREFIX.len()..].to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CloudId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// myshoes' `runner_name` (`myshoes-<uuid>`), checked because it reaches logs, the store and
/// the guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunnerName(String);

impl RunnerName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(value: &str) -> Result<Self, IdError> {
        validate_name("runner_name", value, Self::MAX_LEN)?;
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunnerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_id_round_trips_to_runner_id() {
        let id = RunnerId::generate();
        let cloud = id.cloud_id();
        assert!(cloud.as_str().starts_with("shoes-vz-"));
        let parsed = CloudId::parse(cloud.as_str()).expect("own cloud id parses");
        assert_eq!(parsed.runner_id(), id);
    }

    #[test]
    fn foreign_or_malformed_cloud_ids_are_refused() {
        for bad in [
            "",
            "i-0123456789",
            "shoes-vz-",
            "shoes-vz-../../etc",
            "shoes-vz-0123456789ABCDEF0123456789ABCDEF",
            "shoes-vz-0123456789abcdef0123456789abcdef0",
        ] {
            assert!(CloudId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn runner_names_that_could_escape_a_path_are_refused() {
        assert!(RunnerName::parse("myshoes-1c6f1f80-52b6-4a4c-8a4e-1c0d7d3c9d1e").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-rf", "a b", "x\0y", "名前"] {
            assert!(RunnerName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(RunnerName::MAX_LEN + 1);
        assert!(matches!(
            RunnerName::parse(&long),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        let good: Result<RunnerId, _> =
            serde_json::from_str("\"0123456789abcdef0123456789abcdef\"");
        assert!(good.is_ok());
        let bad: Result<RunnerId, _> = serde_json::from_str("\"../etc/passwd\"");
        assert!(bad.is_err());
    }
}
