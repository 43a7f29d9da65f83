//! shell, control and stdin: frontend ROUTER ⇄ kernel DEALER.
//!
//! A frontend's routing id travels to the kernel as an extra routing frame and comes
//! back on the reply, which is how replies (and stdin's input_request, addressed to
//! the shell identity) find their frontend.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::startup::Activity;
use super::{Relay, accept, refusal};
use crate::audit::events;
use crate::audit::{Direction, ParsedMessage, needs_write_ahead};
use crate::config::OnAuditFailure;
use crate::connection::Channel;
use crate::transport::{Frames, Link};
use crate::wire::{Header, WireMessage};

pub(super) fn spawn(
    channel: Channel,
    frontend: Link,
    kernel: Link,
    relay: Arc<Relay>,
    activity: Arc<Activity>,
    iopub: mpsc::Sender<Frames>,
) -> JoinHandle<()> {
    let Link {
        outgoing: to_frontend,
        incoming: mut from_frontend,
    } = frontend;
    let Link {
        outgoing: to_kernel,
        incoming: mut from_kernel,
    } = kernel;
    let requests_relay = relay.clone();
    let refusals_to = to_frontend.clone();
    let requests = async move {
        while let Some(frames) = from_frontend.recv().await {
            // The router's first frame names the connection, should the message be rejected.
            let routing_id = frames.first().cloned();
            match accept::from_frontend(frames, &requests_relay) {
                Ok((mut message, header, parsed)) => {
                    if !admit(
                        channel,
                        &message,
                        &header,
                        parsed,
                        &requests_relay,
                        &refusals_to,
                        &iopub,
                    )
                    .await
                    {
                        continue;
                    }
                    message.resign(&requests_relay.kernel);
                    if to_kernel.send(message.into_frames()).await.is_err() {
                        break;
                    }
                }
                Err(mut rejection) => {
                    rejection.sender =
                        routing_id.and_then(|id| requests_relay.peers.find(channel, &id));
                    rejection.report(channel, &requests_relay).await
                }
            }
        }
    };
    let replies = async move {
        while let Some(frames) = from_kernel.recv().await {
            activity.touch();
            match accept::from_kernel(frames, &relay, channel) {
                Ok(mut message) => {
                    if let Some(auditor) = &relay.auditor {
                        auditor
                            .observe(channel, Direction::FromKernel, &message, None)
                            .await;
                    }
                    message.resign(&relay.frontend);
                    if to_frontend.send(message.into_frames()).await.is_err() {
                        break;
                    }
                }
                Err(rejection) => rejection.report(channel, &relay).await,
            }
        }
    };
    tokio::spawn(async move {
        tokio::join!(requests, replies);
    })
}

/// Puts a frontend message on the record; false when it must not reach the kernel
/// because it could not be recorded first (block policy), after answering it.
async fn admit(
    channel: Channel,
    message: &WireMessage,
    header: &Header,
    parsed: Option<ParsedMessage>,
    relay: &Relay,
    to_frontend: &mpsc::Sender<Frames>,
    iopub: &mpsc::Sender<Frames>,
) -> bool {
    let (Some(auditor), Some(parsed)) = (&relay.auditor, parsed) else {
        return true;
    };
    if !needs_write_ahead(&header.msg_type, message.size()) {
        auditor
            .observe(channel, Direction::FromFrontend, message, Some(parsed))
            .await;
        return true;
    }
    let Err(error) = auditor.write_ahead(channel, message, parsed).await else {
        return true;
    };
    let mut unrecorded = events::RequestUnrecorded {
        bypassed: false,
        msg_id: header.msg_id.clone(),
        refused_msg_type: header.msg_type.clone(),
        channel: channel.name().to_owned(),
        reason: error.to_string(),
    };
    match auditor.policy {
        OnAuditFailure::Block => {
            tracing::warn!(%channel, msg_id = %header.msg_id, msg_type = %header.msg_type, %error, "request refused: not recorded");
            auditor.event(&unrecorded);
            refusal::refuse(message, &header.msg_type, &error, relay, to_frontend, iopub).await;
            false
        }
        OnAuditFailure::Allow => {
            tracing::warn!(%channel, msg_id = %header.msg_id, msg_type = %header.msg_type, %error, "request relayed unrecorded (allow policy)");
            unrecorded.bypassed = true;
            auditor.event(&unrecorded);
            true
        }
    }
}
