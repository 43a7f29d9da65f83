//! Replay detection: a frontend message whose signature was seen before is dropped,
//! as ipykernel does, so a captured message cannot be sent again.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

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

    /// Records `signature`; returns false when it was already seen (a replay).
    /// Empty signatures (unsigned sessions) are never treated as replays.
    pub fn first_use(&mut self, signature: &Bytes) -> bool {
        if signature.is_empty() {
            return true;
        }
        if !self.seen.insert(signature.clone()) {
            return false;
        }
        self.order.push_back(signature.clone());
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
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

    #[test]
    fn second_use_of_a_signature_is_a_replay() {
        let mut guard = ReplayGuard::default();
        let signature = Bytes::from_static(b"abc");
        assert!(guard.first_use(&signature));
        assert!(!guard.first_use(&signature));
        assert!(guard.first_use(&Bytes::from_static(b"def")));
    }

    #[test]
    fn unsigned_messages_are_not_replays() {
        let mut guard = ReplayGuard::default();
        assert!(guard.first_use(&Bytes::new()));
        assert!(guard.first_use(&Bytes::new()));
    }

    #[test]
    fn memory_is_bounded_and_oldest_is_forgotten() {
        let mut guard = ReplayGuard::new(2);
        for signature in [&b"a"[..], b"b", b"c"] {
            assert!(guard.first_use(&Bytes::copy_from_slice(signature)));
        }
        assert_eq!(guard.seen.len(), 2);
        assert!(
            guard.first_use(&Bytes::from_static(b"a")),
            "forgotten after eviction"
        );
        assert!(
            !guard.first_use(&Bytes::from_static(b"c")),
            "still remembered"
        );
    }
}
