//! myshoes' resource types, and the table that turns them into vCPUs and memory.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// myshoes' `ResourceType`, with the same numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    Unknown,
    Nano,
    Micro,
    Small,
    Medium,
    Large,
    Xlarge,
    #[serde(rename = "2xlarge")]
    Xlarge2,
    #[serde(rename = "3xlarge")]
    Xlarge3,
    #[serde(rename = "4xlarge")]
    Xlarge4,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource type number {0} is not one myshoes defines (0-9)")]
    UnknownNumber(i32),
    #[error("unknown resource type {0:?}: expected nano, micro, small, medium, large, xlarge, 2xlarge, 3xlarge or 4xlarge")]
    UnknownName(String),
    #[error("resource type {0} has no entry in the resource table; add it to [resources] in the server config")]
    NotMapped(ResourceType),
    #[error("resource table entry {0} asks for zero vCPUs or zero memory")]
    Empty(ResourceType),
}

impl ResourceType {
    pub const ALL: [ResourceType; 10] = [
        ResourceType::Unknown,
        ResourceType::Nano,
        ResourceType::Micro,
        ResourceType::Small,
        ResourceType::Medium,
        ResourceType::Large,
        ResourceType::Xlarge,
        ResourceType::Xlarge2,
        ResourceType::Xlarge3,
        ResourceType::Xlarge4,
    ];

    pub fn from_i32(value: i32) -> Result<Self, ResourceError> {
        usize::try_from(value)
            .ok()
            .and_then(|index| Self::ALL.get(index).copied())
            .ok_or(ResourceError::UnknownNumber(value))
    }

    pub fn as_i32(self) -> i32 {
        Self::ALL
            .iter()
            .position(|t| *t == self)
            .map_or(0, |index| index as i32)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Unknown => "unknown",
            ResourceType::Nano => "nano",
            ResourceType::Micro => "micro",
            ResourceType::Small => "small",
            ResourceType::Medium => "medium",
            ResourceType::Large => "large",
            ResourceType::Xlarge => "xlarge",
            ResourceType::Xlarge2 => "2xlarge",
            ResourceType::Xlarge3 => "3xlarge",
            ResourceType::Xlarge4 => "4xlarge",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceType {
    type Err = ResourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ResourceError::UnknownName(s.to_string()))
    }
}

/// What one runner of a resource type gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Resource type → vCPUs and memory; `Unknown` (myshoes' "use your default") maps to
/// `default_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceTable {
    pub default_type: ResourceType,
    pub types: BTreeMap<ResourceType, ResourceSpec>,
}

impl Default for ResourceTable {
    /// Sizes that fit Apple Silicon hosts running two macOS guests.
    fn default() -> Self {
        let entries = [
            (ResourceType::Nano, 1, 1024),
            (ResourceType::Micro, 1, 2048),
            (ResourceType::Small, 2, 4096),
            (ResourceType::Medium, 2, 6144),
            (ResourceType::Large, 4, 8192),
            (ResourceType::Xlarge, 4, 12288),
            (ResourceType::Xlarge2, 6, 16384),
            (ResourceType::Xlarge3, 8, 24576),
            (ResourceType::Xlarge4, 12, 32768),
        ];
        Self {
            default_type: ResourceType::Medium,
            types: entries
                .into_iter()
                .map(|(t, vcpus, memory_mib)| (t, ResourceSpec { vcpus, memory_mib }))
                .collect(),
        }
    }
}

impl ResourceTable {
    /// The type actually served (Unknown becomes the default) and its size.
    pub fn resolve(
        &self,
        requested: ResourceType,
    ) -> Result<(ResourceType, ResourceSpec), ResourceError> {
        let served = if requested == ResourceType::Unknown {
            self.default_type
        } else {
            requested
        };
        let spec = self
            .types
            .get(&served)
            .copied()
            .ok_or(ResourceError::NotMapped(served))?;
        Ok((served, spec))
    }

    pub fn validate(&self) -> Result<(), ResourceError> {
        for (t, spec) in &self.types {
            if spec.vcpus == 0 || spec.memory_mib == 0 {
                return Err(ResourceError::Empty(*t));
            }
        }
        self.resolve(ResourceType::Unknown).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_match_myshoes() {
        assert_eq!(ResourceType::from_i32(0), Ok(ResourceType::Unknown));
        assert_eq!(ResourceType::from_i32(1), Ok(ResourceType::Nano));
        assert_eq!(ResourceType::from_i32(9), Ok(ResourceType::Xlarge4));
        assert_eq!(ResourceType::Xlarge2.as_i32(), 7);
        assert!(ResourceType::from_i32(10).is_err());
        assert!(ResourceType::from_i32(-1).is_err());
    }

    #[test]
    fn unknown_resolves_to_the_default_and_is_echoed_as_served() {
        let table = ResourceTable::default();
        let (served, spec) = table
            .resolve(ResourceType::Unknown)
            .expect("default mapped");
        assert_eq!(served, ResourceType::Medium);
        assert_eq!(spec.vcpus, 2);
        let (served, _) = table.resolve(ResourceType::Large).expect("large mapped");
        assert_eq!(served, ResourceType::Large);
    }

    #[test]
    fn unmapped_types_and_empty_entries_are_errors() {
        let mut table = ResourceTable::default();
        table.types.remove(&ResourceType::Xlarge4);
        assert_eq!(
            table.resolve(ResourceType::Xlarge4),
            Err(ResourceError::NotMapped(ResourceType::Xlarge4))
        );
        table.types.insert(
            ResourceType::Nano,
            ResourceSpec {
                vcpus: 0,
                memory_mib: 1,
            },
        );
        assert_eq!(
            table.validate(),
            Err(ResourceError::Empty(ResourceType::Nano))
        );
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("2XLARGE".parse::<ResourceType>(), Ok(ResourceType::Xlarge2));
        assert!("huge".parse::<ResourceType>().is_err());
    }
}
