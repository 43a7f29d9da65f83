//! Replay detection: a frontend message whose signature was seen before is dropped,
//! as ipykernel does, so a captured message cannot be sent again.
//!
//! Signatures are compared as Jupyter writes them, in lowercase hex: hex decoding
//! ignores case, so `AB12…` carries the same HMAC as `ab12…`, and a copy of a message
//! with its signature re-cased is a replay of it. A signature in any other spelling is
//! refused even the first time, as jupyter_client refuses it (it compares the signature
//! with its own lowercase hexdigest), so no real client sends one.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use super::WireError;

/// Remembers the most recent `capacity` signatures; the oldest are forgotten first.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: HashSet<Bytes>,
    order: VecDeque<Bytes>,
    capacity: usize,
}

impl ReplayGuard {
    /// Jupyter's own session keeps 2^16 digests.
    pub const DEFAULT_CAPACITY: usize = 1 << 16;

    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::with_capacity(capacity.min(1024)),
            order: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
        }
    }

    /// Checks the signature of a message whose HMAC was verified, and remembers it:
    /// `Replayed` when it was seen before in any letter case, `NonCanonicalSignature`
    /// (not remembered) when it is not lowercase. Empty signatures (unsigned sessions)
    /// are never treated as replays.
    pub fn check(&mut self, signature: &Bytes) -> Result<(), WireError> {
        if signature.is_empty() {
            return Ok(());
        }
        if signature.iter().any(u8::is_ascii_uppercase) {
            let canonical = signature.to_ascii_lowercase();
            return Err(if self.seen.contains(canonical.as_slice()) {
                WireError::Replayed
            } else {
                WireError::NonCanonicalSignature
            });
        }
        if !self.seen.insert(signature.clone()) {
            return Err(WireError::Replayed);
        }
        self.order.push_back(signature.clone());
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        Ok(())
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_use(guard: &mut ReplayGuard, signature: &[u8]) -> bool {
        guard.check(&Bytes::copy_from_slice(signature)).is_ok()
    }

    #[test]
    fn second_use_of_a_signature_is_a_replay() {
        let mut guard = ReplayGuard::default();
        assert!(first_use(&mut guard, b"abc"));
        assert_eq!(
            guard.check(&Bytes::from_static(b"abc")),
            Err(WireError::Replayed)
        );
        assert!(first_use(&mut guard, b"def"));
    }

    #[test]
    fn a_recased_copy_is_a_replay_and_upper_case_is_refused_first_time_too() {
        let mut guard = ReplayGuard::default();
        assert!(first_use(&mut guard, b"0a1b2c"));
        for copy in [&b"0A1B2C"[..], b"0a1B2c"] {
            assert_eq!(
                guard.check(&Bytes::copy_from_slice(copy)),
                Err(WireError::Replayed)
            );
        }
        assert_eq!(
            guard.check(&Bytes::from_static(b"3D4E")),
            Err(WireError::NonCanonicalSignature)
        );
        // Refused, not remembered: the genuine lowercase signature still runs once.
        assert!(first_use(&mut guard, b"3d4e"));
    }

    #[test]
    fn unsigned_messages_are_not_replays() {
        let mut guard = ReplayGuard::default();
        assert!(first_use(&mut guard, b""));
        assert!(first_use(&mut guard, b""));
    }

    #[test]
    fn memory_is_bounded_and_oldest_is_forgotten() {
        let mut guard = ReplayGuard::new(2);
        for signature in [&b"a"[..], b"b", b"c"] {
            assert!(first_use(&mut guard, signature));
        }
        assert_eq!(guard.seen.len(), 2);
        assert!(first_use(&mut guard, b"a"), "forgotten after eviction");
        assert!(!first_use(&mut guard, b"c"), "still remembered");
    }
}
