//! The checkpoint signing key (only the collector can read it) and its public half
//! (for verifiers).
//!
//! `keys/checkpoint.key` holds the 32-byte Ed25519 seed as hex text; it is created on
//! first open from the OS random source. `checkpoint.pub` holds the public key as hex
//! text and is readable like the segments. The key id is the first 16 hex digits of the
//! SHA-256 of the public key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use super::error::{Result, StoreError};
use super::layout::{self, Access, KEYS_DIR, PUBLIC_KEY_FILE, SIGNING_KEY_FILE};

/// The id that names a public key in checkpoints.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

fn key_error(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Key {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_hex_32(path: &Path) -> Result<[u8; 32]> {
    let text = fs::read_to_string(path).map_err(|e| StoreError::io("read", path, e))?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| key_error(path, "expected 64 hex digits"))?;
    Ok(bytes)
}

/// Reads a public key file (64 hex digits).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    let bytes = read_hex_32(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| key_error(path, "not an Ed25519 public key"))
}

/// The public key of the store at `dir`, as the hex text to keep somewhere the store's
/// writers cannot reach (give it to `verify --key`).
pub fn export_public_key(dir: &Path) -> Result<String> {
    let key = read_public_key(&dir.join(PUBLIC_KEY_FILE))?;
    Ok(hex::encode(key.as_bytes()))
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename,
/// so a crash leaves either the old file or the complete new one.
pub(super) fn write_atomically(path: &Path, text: &str, mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
    ));
    let _ = fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| StoreError::io("create", &temp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write", &temp, e))?;
    fs::rename(&temp, path).map_err(|e| StoreError::io("rename into place", path, e))?;
    layout::sync_dir(dir)
}

/// Loads the signing key of the store at `dir`, creating it on first use, and makes sure
/// `checkpoint.pub` matches it.
pub(crate) fn load_or_create(dir: &Path, access: Access) -> Result<SigningKey> {
    let keys_dir = dir.join(KEYS_DIR);
    layout::ensure_dir(&keys_dir, 0o700)?;
    layout::set_mode(&keys_dir, 0o700)?;
    let key_path = signing_key_path(dir);
    let key = if key_path.exists() {
        layout::set_mode(&key_path, 0o600)?;
        SigningKey::from_bytes(&read_hex_32(&key_path)?)
    } else {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|e| key_error(&key_path, format!("no randomness from the OS: {e}")))?;
        write_atomically(&key_path, &format!("{}\n", hex::encode(seed)), 0o600)?;
        tracing::info!(path = %key_path.display(), "created the checkpoint signing key");
        SigningKey::from_bytes(&seed)
    };
    let public = key.verifying_key();
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    let current = read_public_key(&pub_path).ok();
    if current != Some(public) {
        write_atomically(
            &pub_path,
            &format!("{}\n", hex::encode(public.as_bytes())),
            0o600,
        )?;
    }
    access.apply(&pub_path, access.sealed_mode())?;
    Ok(key)
}

/// Path of the signing key of the store at `dir`.
fn signing_key_path(dir: &Path) -> PathBuf {
    dir.join(KEYS_DIR).join(SIGNING_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_is_created_once_and_exported() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access {
            reviewers_gid: None,
        };
        let first = load_or_create(dir.path(), access).unwrap();
        let again = load_or_create(dir.path(), access).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        assert_eq!(
            export_public_key(dir.path()).unwrap(),
            hex::encode(first.verifying_key().as_bytes())
        );
        assert_eq!(mode(&dir.path().join(KEYS_DIR)), 0o700);
        assert_eq!(mode(&signing_key_path(dir.path())), 0o600);
        assert_eq!(mode(&dir.path().join(PUBLIC_KEY_FILE)), 0o400);
        assert_eq!(key_id(&first.verifying_key()).len(), 16);
    }

    #[test]
    fn damaged_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(KEYS_DIR)).unwrap();
        fs::write(signing_key_path(dir.path()), "not hex\n").unwrap();
        let error = load_or_create(
            dir.path(),
            Access {
                reviewers_gid: None,
            },
        )
        .unwrap_err();
        assert!(matches!(error, StoreError::Key { .. }), "{error}");
    }
}
