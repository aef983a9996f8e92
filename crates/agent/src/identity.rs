//! The agent's stable identity (generated once, kept on disk, reused on every start) and its
//! own credential (handed out by the server when the agent enrolls, kept 0600 beside it).

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

/// Where the agent's credential is kept, beside its id.
pub const CREDENTIAL_FILE: &str = "agent-credential";

/// The agent's own credential: shown to the server, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    pub fn new(secret: String) -> Option<Credential> {
        let valid = !secret.is_empty()
            && secret.len() <= 256
            && secret.bytes().all(|b| b.is_ascii_graphic());
        valid.then_some(Credential(secret))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// The credential in `<data_dir>/agent-credential`, if the agent enrolled.
pub fn load_credential(data_dir: &Path) -> Result<Option<Credential>, IdentityError> {
    let path = data_dir.join(CREDENTIAL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Credential::new(text.trim().to_string())
            .map(Some)
            .ok_or(IdentityError::Corrupt { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}

/// Keeps the credential the server issued (mode 0600, replaced atomically).
pub fn store_credential(data_dir: &Path, credential: &Credential) -> Result<(), IdentityError> {
    let path = data_dir.join(CREDENTIAL_FILE);
    // write_atomic's temp file is created 0600 and renamed into place.
    write_atomic(&path, format!("{}\n", credential.expose()).as_bytes())
        .map_err(|source| IdentityError::Io { path, source })
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
    fn the_credential_is_kept_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_credential(dir.path()).expect("none yet"), None);
        let credential = Credential::new("svzagent_0123".into()).expect("valid");
        store_credential(dir.path(), &credential).expect("stored");
        assert_eq!(
            load_credential(dir.path()).expect("read"),
            Some(credential.clone())
        );
        let mode = std::fs::metadata(dir.path().join(CREDENTIAL_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{credential:?}").contains("0123"));
        assert!(Credential::new("bad token\n".into()).is_none());
    }

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
