//! The agent's stable identity: generated once, kept on disk, reused on every start.

use crate::fsutil::write_atomic;
use shoes_vz_model::AgentId;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the agent identity file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent identity file {path} is corrupt; delete it to make the agent register as a new agent")]
    Corrupt { path: PathBuf },
}

/// Reads `<data_dir>/agent-id`, creating it (and `data_dir`) on first start.
pub fn load_or_create(data_dir: &Path) -> Result<AgentId, IdentityError> {
    let path = data_dir.join("agent-id");
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            AgentId::parse(text.trim()).map_err(|_| IdentityError::Corrupt { path: path.clone() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let id = AgentId::generate();
            write_atomic(&path, format!("{id}\n").as_bytes()).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restarts_and_corruption_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("created");
        let second = load_or_create(dir.path()).expect("read back");
        assert_eq!(first, second);
        std::fs::write(dir.path().join("agent-id"), "../../etc").expect("overwrite");
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}
