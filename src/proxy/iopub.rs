//! iopub: kernel SUB → frontend XPUB, and the proxy's own `iopub_welcome`.
//!
//! The proxy subscribes to the kernel once, so the kernel's welcome is for the proxy
//! alone and is dropped; every frontend subscription gets a welcome signed by the
//! proxy instead, which is what tells the frontend its subscription is live.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Relay;
use super::accept;
use super::startup::Activity;
use crate::audit::Direction;
use crate::connection::Channel;
use crate::transport::{Frames, Subscription};
use crate::wire::{WireMessage, compose};

const WELCOME: &str = "iopub_welcome";

pub(super) fn spawn_relay(
    mut from_kernel: mpsc::Receiver<Frames>,
    to_frontends: mpsc::Sender<Frames>,
    relay: Arc<Relay>,
    activity: Arc<Activity>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(frames) = from_kernel.recv().await {
            activity.touch();
            let mut message = match accept::from_kernel(frames, &relay, Channel::Iopub) {
                Ok(message) => message,
                Err(rejection) => {
                    rejection.report(Channel::Iopub, &relay).await;
                    continue;
                }
            };
            if message
                .header()
                .is_ok_and(|header| header.msg_type == WELCOME)
            {
                continue;
            }
            if let Some(auditor) = &relay.auditor {
                auditor
                    .observe(Channel::Iopub, Direction::FromKernel, &message, None)
                    .await;
            }
            message.resign(&relay.frontend);
            if to_frontends.send(message.into_frames()).await.is_err() {
                break;
            }
        }
    })
}

/// Answers each frontend subscription with a welcome for that frontend alone.
pub(super) fn spawn_welcomes(
    mut subscriptions: mpsc::Receiver<Subscription>,
    to_one: mpsc::Sender<(Bytes, Frames)>,
    relay: Arc<Relay>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(subscription) = subscriptions.recv().await {
            let topic = String::from_utf8_lossy(&subscription.topic);
            tracing::debug!(%topic, "frontend subscribed to iopub");
            let welcome = welcome_message(&topic, &relay);
            if to_one
                .send((subscription.peer, welcome.into_frames()))
                .await
                .is_err()
            {
                break;
            }
        }
    })
}

fn welcome_message(topic: &str, relay: &Relay) -> WireMessage {
    let mut welcome = compose(
        vec![],
        WELCOME,
        &relay.session,
        &serde_json::json!({ "subscription": topic }),
    );
    welcome.resign(&relay.frontend);
    welcome
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::wire::{ReplayGuard, SignatureScheme, Signer};

    #[test]
    fn welcome_is_signed_with_the_frontend_key() {
        let relay = Relay {
            frontend: Signer::new(b"frontend", SignatureScheme::Sha256),
            kernel: Signer::new(b"kernel", SignatureScheme::Sha256),
            check_kernel_signatures: true,
            replay: Mutex::new(ReplayGuard::default()),
            max_message_bytes: usize::MAX,
            session: "proxy-session".into(),
            auditor: None,
            rejections: Default::default(),
            peers: Default::default(),
        };
        let welcome = welcome_message("", &relay);
        welcome
            .verify(&relay.frontend)
            .expect("frontend can verify");
        assert!(
            welcome.routing.is_empty(),
            "no topic frame: every subscriber gets it"
        );
        assert_eq!(welcome.header().expect("header").msg_type, WELCOME);
        let content: serde_json::Value = serde_json::from_slice(&welcome.content).expect("json");
        assert_eq!(content, serde_json::json!({"subscription": ""}));
    }
}
