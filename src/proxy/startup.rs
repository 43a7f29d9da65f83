//! Waiting for the real kernel to be ready, and knowing when it has gone quiet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ProxyError, Relay, accept};
use crate::connection::Channel;
use crate::transport::{Frames, Link};
use crate::wire::compose;

/// Routing frame of the proxy's own requests, so their replies are not relayed.
const OWN_ROUTE: &[u8] = b"jupyter-audit";

/// How often the proxy repeats its kernel_info_request while iopub is silent.
const NUDGE_INTERVAL: Duration = Duration::from_millis(500);

/// Waits until the kernel answers on shell and its iopub reaches the proxy, so that
/// no output of the first request a frontend sends can be missed. Kernels that send
/// `iopub_welcome` confirm iopub at once; for others the status messages around the
/// proxy's own kernel_info_request do.
pub(super) async fn wait_until_ready(
    shell: &mut Link,
    iopub: &mut mpsc::Receiver<Frames>,
    relay: &Relay,
    patience: Duration,
) -> Result<(), ProxyError> {
    let deadline = Instant::now() + patience;
    let mut replied = false;
    let mut iopub_live = false;
    let mut nudge = tokio::time::interval(NUDGE_INTERVAL);
    while !(replied && iopub_live) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(ProxyError::StartupTimeout(patience)),
            _ = nudge.tick(), if !iopub_live || !replied => {
                let mut request = compose(
                    vec![Bytes::from_static(OWN_ROUTE)],
                    "kernel_info_request",
                    &relay.session,
                    &serde_json::json!({}),
                );
                request.resign(&relay.kernel);
                if shell.outgoing.send(request.into_frames()).await.is_err() {
                    return Err(ProxyError::StartupTimeout(patience));
                }
            }
            Some(frames) = shell.incoming.recv() => {
                if let Ok(message) = accept::from_kernel(frames, relay, Channel::Shell)
                    && message.routing.first().is_some_and(|route| route.as_ref() == OWN_ROUTE)
                {
                    replied = true;
                }
            }
            Some(frames) = iopub.recv() => {
                // Any kernel message proves the subscription is live. It is not
                // relayed: it belongs to the proxy's own requests or to the welcome.
                if accept::from_kernel(frames, relay, Channel::Iopub).is_ok() {
                    iopub_live = true;
                }
            }
        }
    }
    Ok(())
}

/// When the kernel side last sent anything, to drain output after the kernel exits.
#[derive(Debug)]
pub(crate) struct Activity {
    origin: std::time::Instant,
    last_millis: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            origin: std::time::Instant::now(),
            last_millis: AtomicU64::new(0),
        }
    }
}

impl Activity {
    pub(crate) fn touch(&self) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Returns once nothing was relayed for `quiet`, or after `limit` at most.
    pub(crate) async fn wait_for_quiet(&self, quiet: Duration, limit: Duration) {
        let give_up = Instant::now() + limit;
        while self.quiet_for() < quiet && Instant::now() < give_up {
            tokio::time::sleep(quiet / 3).await;
        }
    }
}
