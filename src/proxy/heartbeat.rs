//! Heartbeat: pings are passed to the real kernel and its echo back, untouched, so a
//! frontend's heartbeat says what it would say without the proxy.

use tokio::task::JoinHandle;

use crate::transport::Link;

pub(super) fn spawn(frontend: Link, kernel: Link, max_message_bytes: usize) -> JoinHandle<()> {
    let Link {
        outgoing: to_frontend,
        incoming: mut from_frontend,
    } = frontend;
    let Link {
        outgoing: to_kernel,
        incoming: mut from_kernel,
    } = kernel;
    let pings = async move {
        while let Some(frames) = from_frontend.recv().await {
            let size: usize = frames.iter().map(|frame| frame.len()).sum();
            if size > max_message_bytes {
                tracing::warn!(
                    channel = "hb",
                    reason = "oversized",
                    size,
                    "message rejected"
                );
                continue;
            }
            if to_kernel.send(frames).await.is_err() {
                break;
            }
        }
    };
    let echoes = async move {
        while let Some(frames) = from_kernel.recv().await {
            if to_frontend.send(frames).await.is_err() {
                break;
            }
        }
    };
    tokio::spawn(async move {
        tokio::join!(pings, echoes);
    })
}
