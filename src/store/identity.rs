//! The store's identity: a random UUID (v4) made with the store and kept in `store_id`,
//! so that a central trail (PostgreSQL) can tell stores apart whatever their host or path.
//!
//! A store made before identities existed gets one the next time it is opened.

use std::fs;
use std::path::Path;

use uuid::Uuid;

use super::error::{Result, StoreError};
use super::keys::write_atomically;
use super::layout::{Access, STORE_ID_FILE};

/// The id of the store at `dir`, as written in its `store_id` file.
pub fn store_id(dir: &Path) -> Result<Uuid> {
    let path = dir.join(STORE_ID_FILE);
    let text = fs::read_to_string(&path).map_err(|e| StoreError::io("read", &path, e))?;
    Uuid::parse_str(text.trim()).map_err(|_| StoreError::Key {
        path: path.clone(),
        detail: "expected a UUID".into(),
    })
}

/// The id of the store at `dir`, made (and written durably) if it has none yet.
pub(super) fn load_or_create(dir: &Path, access: Access) -> Result<Uuid> {
    let path = dir.join(STORE_ID_FILE);
    let id = if path.exists() {
        store_id(dir)?
    } else {
        let id = Uuid::new_v4();
        write_atomically(&path, &format!("{id}\n"), 0o600)?;
        tracing::info!(store_id = %id, "created the store's identity");
        id
    };
    access.apply(&path, access.sealed_mode())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_is_made_once_kept_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access {
            reviewers_gid: None,
        };
        let made = load_or_create(dir.path(), access).unwrap();
        assert_eq!(made.get_version_num(), 4);
        assert_eq!(load_or_create(dir.path(), access).unwrap(), made);
        assert_eq!(store_id(dir.path()).unwrap(), made);
        let mode = fs::metadata(dir.path().join(STORE_ID_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    #[test]
    fn a_damaged_identity_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STORE_ID_FILE), "not a uuid\n").unwrap();
        assert!(store_id(dir.path()).is_err());
    }
}
