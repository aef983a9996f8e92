//! Looking up the runner's user: the system user database for the real root (which on
//! macOS lives in Directory Services, not `/etc/passwd`; each user is looked up once per
//! process), `<root>/etc/passwd` for a fake root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// As the user database has it (not prefixed with `--root`).
    pub home: PathBuf,
    pub shell: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {name} does not exist in the guest; create it in the template or fix ssh_user")]
    NotFound { name: String },
    #[error("could not look up user {name}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// System lookups already made by this process. A restored warm guest's runner-agent looked
/// its user up when the template booted; asking the user database again after the restore
/// costs an emulated guest tens of milliseconds of code it runs for the first time since, for
/// the same answer (the guest's users are the template's).
static SYSTEM_USERS: Mutex<BTreeMap<String, UserInfo>> = Mutex::new(BTreeMap::new());

pub fn lookup(root: &Path, name: &str) -> Result<UserInfo, UserError> {
    if root == Path::new("/") {
        let known = SYSTEM_USERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(user) = known {
            return Ok(user);
        }
        let user = lookup_system(name)?;
        SYSTEM_USERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), user.clone());
        return Ok(user);
    }
    let passwd = root.join("etc/passwd");
    let text = std::fs::read_to_string(&passwd).map_err(|source| UserError::Lookup {
        name: name.to_owned(),
        source,
    })?;
    find_in_passwd(&text, name).ok_or_else(|| UserError::NotFound {
        name: name.to_owned(),
    })
}

fn lookup_system(name: &str) -> Result<UserInfo, UserError> {
    let user = nix::unistd::User::from_name(name).map_err(|errno| UserError::Lookup {
        name: name.to_owned(),
        source: errno.into(),
    })?;
    let user = user.ok_or_else(|| UserError::NotFound {
        name: name.to_owned(),
    })?;
    Ok(UserInfo {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        shell: user.shell,
    })
}

/// The entry for `name` in `passwd(5)` text (`name:pw:uid:gid:gecos:home:shell`).
pub fn find_in_passwd(text: &str, name: &str) -> Option<UserInfo> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [user, _pw, uid, gid, _gecos, home, shell] = fields[..] else {
                return None;
            };
            if user != name {
                return None;
            }
            Some(UserInfo {
                name: user.to_owned(),
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home: PathBuf::from(home),
                shell: PathBuf::from(shell),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# comment
runner-old:x:1000:1000::/home/runner-old:/bin/sh
broken:x:notanumber:1::/home/broken:/bin/sh
runner:x:1001:121:GitHub runner,,,:/home/runner:/bin/bash
";

    #[test]
    fn passwd_entries_are_found_by_exact_name() {
        let user = find_in_passwd(PASSWD, "runner").expect("runner is listed");
        assert_eq!(
            user,
            UserInfo {
                name: "runner".into(),
                uid: 1001,
                gid: 121,
                home: "/home/runner".into(),
                shell: "/bin/bash".into()
            }
        );
        assert_eq!(find_in_passwd(PASSWD, "runne"), None);
        assert_eq!(find_in_passwd(PASSWD, "broken"), None);
        assert_eq!(find_in_passwd(PASSWD, "# comment"), None);
    }

    #[test]
    fn a_fake_root_uses_its_own_passwd() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("etc"))?;
        std::fs::write(root.path().join("etc/passwd"), PASSWD)?;
        assert_eq!(lookup(root.path(), "runner")?.uid, 1001);
        assert!(matches!(
            lookup(root.path(), "nobody-here"),
            Err(UserError::NotFound { .. })
        ));
        Ok(())
    }

    #[test]
    fn the_real_root_uses_the_system_database() -> Result<(), UserError> {
        assert_eq!(lookup(Path::new("/"), "root")?.uid, 0);
        // The second answer comes from the process's memory, and is the same.
        assert_eq!(lookup(Path::new("/"), "root")?, lookup_system("root")?);
        assert!(matches!(
            lookup(Path::new("/"), "no-such-user-shoes-vz"),
            Err(UserError::NotFound { .. })
        ));
        Ok(())
    }
}
