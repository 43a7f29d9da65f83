//! Heartbeat: pings are passed to the real kernel and its echo back, untouched, so a
//! frontend's heartbeat says what it would say without the proxy. (Sizes are capped
//! by the frontend socket like on every channel.)

use tokio::task::JoinHandle;

use crate::transport::Link;

pub(super) fn spawn(frontend: Link, kernel: Link) -> JoinHandle<()> {
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
