//! Signed checkpoints: the chain head at a sequence, at a time, signed with Ed25519.
//!
//! One JSON object per line in `checkpoints.jsonl`:
//! `{"sequence":N,"chain_hash":"<hex>","segment":"<file name>","time":"<RFC 3339 UTC>",
//! "key_id":"<16 hex>","signature":"<base64>"}`. The signed message is the UTF-8 text
//! `jupyter-audit checkpoint v1\n{sequence}\n{chain_hash}\n{time}\n`; `segment` and
//! `key_id` are hints and not signed.
//!
//! Ed25519 rather than an HMAC: a verifier needs only the public key, and holding it
//! does not let anyone make checkpoints. With an HMAC every verifier would hold the
//! secret and could forge checkpoints for a rewritten store.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::{Result, StoreError};
use super::keys::key_id;
use super::layout::{self, Access, CHECKPOINTS_FILE};
use super::record::ChainHash;
use super::tail::read_tail;

/// A checkpoint exported or signed into a single file is small; larger files are only
/// read from the end.
const WHOLE_FILE_LIMIT: u64 = 64 * 1024;

/// One signed checkpoint, field for field as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub sequence: u64,
    pub chain_hash: String,
    pub segment: String,
    pub time: String,
    pub key_id: String,
    pub signature: String,
}

/// The exact bytes a checkpoint signature covers.
pub fn signed_message(sequence: u64, chain_hash: &str, time: &str) -> String {
    format!("jupyter-audit checkpoint v1\n{sequence}\n{chain_hash}\n{time}\n")
}

/// The current time as RFC 3339 UTC, to the millisecond.
pub(crate) fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_millisecond(now.millisecond()).unwrap_or(now);
    now.format(&Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

impl Checkpoint {
    /// Signs the chain head `hash` at `sequence`, found in `segment`.
    pub(crate) fn sign(key: &SigningKey, sequence: u64, hash: &ChainHash, segment: &str) -> Self {
        let chain_hash = hex::encode(hash);
        let time = now_rfc3339();
        let signature = key.sign(signed_message(sequence, &chain_hash, &time).as_bytes());
        Checkpoint {
            sequence,
            chain_hash,
            segment: segment.to_owned(),
            time,
            key_id: key_id(&key.verifying_key()),
            signature: BASE64.encode(signature.to_bytes()),
        }
    }

    /// Checks the signature with `key`; the error says why it does not hold.
    pub fn check_signature(&self, key: &VerifyingKey) -> Result<(), String> {
        let expected_id = key_id(key);
        if self.key_id != expected_id {
            return Err(format!(
                "checkpoint names key {} but the public key is {expected_id}",
                self.key_id
            ));
        }
        let bytes = BASE64
            .decode(&self.signature)
            .map_err(|_| "signature is not base64".to_owned())?;
        let signature =
            Signature::from_slice(&bytes).map_err(|_| "signature is not 64 bytes".to_owned())?;
        key.verify_strict(
            signed_message(self.sequence, &self.chain_hash, &self.time).as_bytes(),
            &signature,
        )
        .map_err(|_| format!("signature does not verify with key {expected_id}"))
    }

    /// The chain hash as bytes, if it is 64 hex digits.
    pub fn chain_hash_bytes(&self) -> Option<ChainHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.chain_hash, &mut out).ok()?;
        Some(out)
    }
}

/// Appends `checkpoint` to the store's `checkpoints.jsonl` and syncs it.
pub(crate) fn append(dir: &Path, access: Access, checkpoint: &Checkpoint) -> Result<()> {
    let path = dir.join(CHECKPOINTS_FILE);
    let created = !path.exists();
    let mut line = serde_json::to_vec(checkpoint).map_err(|e| StoreError::Checkpoint {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(access.writable_mode())
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    let before = file.metadata().map(|m| m.len());
    if let Err(error) = file.write_all(&line).and_then(|()| file.sync_data()) {
        // A full disk can take part of the line: cut it off, or the next checkpoint
        // would be appended to the torn one.
        let cut = before.and_then(|len| file.set_len(len).and_then(|()| file.sync_all()));
        if let Err(cut_error) = cut {
            tracing::error!(error = %cut_error, "cannot cut a torn checkpoint line off");
        }
        return Err(StoreError::io("write", &path, error));
    }
    if created {
        access.apply(&path, access.writable_mode())?;
        layout::sync_dir(dir)?;
    }
    Ok(())
}

fn parse(text: &[u8]) -> Option<Checkpoint> {
    serde_json::from_slice(text).ok()
}

/// The checkpoint in `path`: a file holding one checkpoint object (on one line or
/// pretty-printed), or a `checkpoints.jsonl` whose last line is used (a torn last line,
/// from a crash while it was written, is passed over). `Ok(None)`: the file does not
/// exist or is empty.
pub fn read_last(path: &Path) -> Result<Option<Checkpoint>> {
    let Some(file) = layout::open_optional(path)? else {
        return Ok(None);
    };
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("read", path, e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    let tail = read_tail(&file, len, 1).map_err(|e| StoreError::io("read", path, e))?;
    // Newest first: bytes after the last newline may be a complete object written
    // without one (an exported file), or a torn line (then the last complete line counts).
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    if tail.torn > 0 {
        let mut piece = vec![0u8; usize::try_from(tail.torn).unwrap_or(0)];
        file.read_exact_at(&mut piece, tail.complete_len)
            .map_err(|e| StoreError::io("read", path, e))?;
        candidates.push(piece);
    }
    candidates.extend(tail.lines);
    if let Some(checkpoint) = candidates.iter().find_map(|c| parse(c)) {
        return Ok(Some(checkpoint));
    }
    if len <= WHOLE_FILE_LIMIT {
        let mut whole = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut whole))
            .map_err(|e| StoreError::io("read", path, e))?;
        if let Some(checkpoint) = parse(&whole) {
            return Ok(Some(checkpoint));
        }
        if whole.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
    }
    Err(StoreError::Checkpoint {
        path: path.to_path_buf(),
        detail: "the last line is not a checkpoint object".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signature_holds_and_any_signed_field_change_breaks_it() {
        let checkpoint = Checkpoint::sign(&key(1), 42, &[7; 32], "seg");
        let public = key(1).verifying_key();
        assert_eq!(checkpoint.check_signature(&public), Ok(()));
        assert_eq!(checkpoint.chain_hash_bytes(), Some([7; 32]));
        assert!(checkpoint.time.ends_with('Z'), "{}", checkpoint.time);

        let mut forged = checkpoint.clone();
        forged.sequence = 41;
        assert!(forged.check_signature(&public).is_err());
        let mut forged = checkpoint.clone();
        forged.time = "2000-01-01T00:00:00Z".into();
        assert!(forged.check_signature(&public).is_err());

        let other = Checkpoint::sign(&key(2), 42, &[7; 32], "seg");
        let error = other.check_signature(&public).unwrap_err();
        assert!(error.contains("names key"), "{error}");
        let mut relabelled = other;
        relabelled.key_id = checkpoint.key_id.clone();
        let error = relabelled.check_signature(&public).unwrap_err();
        assert!(error.contains("does not verify"), "{error}");
    }

    #[test]
    fn last_checkpoint_of_a_log_or_a_single_exported_object() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access {
            reviewers_gid: None,
        };
        let path = dir.path().join(CHECKPOINTS_FILE);
        assert_eq!(read_last(&path).unwrap(), None);
        let first = Checkpoint::sign(&key(1), 1, &[1; 32], "seg");
        let second = Checkpoint::sign(&key(1), 2, &[2; 32], "seg");
        append(dir.path(), access, &first).unwrap();
        append(dir.path(), access, &second).unwrap();
        assert_eq!(read_last(&path).unwrap(), Some(second.clone()));

        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"sequence\":3,\"chain").unwrap();
        assert_eq!(read_last(&path).unwrap(), Some(second.clone()));

        let exported = dir.path().join("exported.json");
        std::fs::write(&exported, serde_json::to_string_pretty(&first).unwrap()).unwrap();
        assert_eq!(read_last(&exported).unwrap(), Some(first));

        std::fs::write(&exported, "garbage\n").unwrap();
        assert!(matches!(
            read_last(&exported),
            Err(StoreError::Checkpoint { .. })
        ));
    }
}
