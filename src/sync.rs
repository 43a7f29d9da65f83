//! Two concurrency habits shared by the relay and the collector, written once: a lock
//! that outlives a panicked holder, and accepting connections through transient errors.

use std::fmt::Display;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `mutex`, also when a holder panicked: the data behind every lock here is
/// bookkeeping that stays consistent between statements, and a relay or collector
/// that stopped at the next lock would lose records instead.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pause after a failed accept: the usual causes (out of file descriptors, a peer
/// gone before it was accepted) pass, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection `accept` yields; failures are logged as from `listener` and
/// retried after a pause.
pub async fn accept_retrying<T, E, F>(listener: impl Display, mut accept: impl FnMut() -> F) -> T
where
    E: Display,
    F: Future<Output = Result<T, E>>,
{
    loop {
        match accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%listener, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_whose_holder_panicked_still_opens() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let held = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("holder dies");
        })
        .join();
        assert!(mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn accepting_retries_after_a_failure() {
        let mut attempts = 0;
        let accepted = accept_retrying("test", || {
            attempts += 1;
            let outcome = if attempts < 3 {
                Err("EMFILE")
            } else {
                Ok(attempts)
            };
            std::future::ready(outcome)
        })
        .await;
        assert_eq!(accepted, 3);
    }
}
