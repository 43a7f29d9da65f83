//! shell, control and stdin: frontend ROUTER ⇄ kernel DEALER.
//!
//! A frontend's routing id travels to the kernel as an extra routing frame and comes
//! back on the reply, which is how replies (and stdin's input_request, addressed to
//! the shell identity) find their frontend.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::startup::Activity;
use super::{Sides, refusal, rejections};
use crate::audit::events;
use crate::audit::{Direction, ParsedMessage, needs_write_ahead};
use crate::config::OnAuditFailure;
use crate::connection::Channel;
use crate::transport::{Frames, Link, Peer, SenderInfo};
use crate::wire::{Header, WireError, WireMessage};

pub(super) fn spawn(
    channel: Channel,
    frontend: Link,
    kernel: Link,
    sides: Arc<Sides>,
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
    let requests_sides = sides.clone();
    let refusals_to = to_frontend.clone();
    let requests = async move {
        while let Some(frames) = from_frontend.recv().await {
            // The router's first frame names the connection, should the message be rejected.
            let routing_id = frames.first().cloned();
            match accept_from_frontend(frames, &requests_sides) {
                Ok((mut message, header, parsed)) => {
                    if !admit(
                        channel,
                        &message,
                        &header,
                        parsed,
                        &requests_sides,
                        &refusals_to,
                        &iopub,
                    )
                    .await
                    {
                        continue;
                    }
                    message.resign(&requests_sides.kernel);
                    if to_kernel.send(message.into_frames()).await.is_err() {
                        break;
                    }
                }
                Err(mut rejection) => {
                    rejection.sender =
                        routing_id.and_then(|id| requests_sides.peers.find(channel, &id));
                    rejection.report(channel, &requests_sides).await
                }
            }
        }
    };
    let replies = async move {
        while let Some(frames) = from_kernel.recv().await {
            activity.touch();
            match accept_from_kernel(frames, &sides) {
                Ok(mut message) => {
                    if let Some(auditor) = &sides.auditor {
                        auditor
                            .observe(channel, Direction::FromKernel, &message, None)
                            .await;
                    }
                    message.resign(&sides.frontend);
                    if to_frontend.send(message.into_frames()).await.is_err() {
                        break;
                    }
                }
                Err(rejection) => rejection.report(channel, &sides).await,
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
    sides: &Sides,
    to_frontend: &mpsc::Sender<Frames>,
    iopub: &mpsc::Sender<Frames>,
) -> bool {
    let (Some(auditor), Some(parsed)) = (&sides.auditor, parsed) else {
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
            refusal::refuse(message, &header.msg_type, &error, sides, to_frontend, iopub).await;
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

/// Why a message is not relayed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum RejectReason {
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A part of a request that the audit cannot parse: the kernel's own parser may
    /// still read code from it (Python's json accepts NaN, lone surrogates, deeper
    /// nesting, and Jupyter decodes bad UTF-8 as U+FFFD), which would run code that is
    /// not on the record.
    #[error(
        "{part} is not JSON the audit can read ({error}); not relayed, it could run code off the record"
    )]
    UnreadableContent { part: &'static str, error: String },
}

/// A message that is not relayed, with what is known about it for the diagnostic.
#[derive(Debug)]
pub(super) struct Rejection {
    pub from: &'static str,
    pub error: RejectReason,
    pub msg_id: Option<String>,
    pub msg_type: Option<String>,
    /// The frontend connection it came from, when the router listed it.
    pub sender: Option<Arc<Peer>>,
}

impl Rejection {
    pub(super) fn new(
        from: &'static str,
        error: impl Into<RejectReason>,
        message: Option<&WireMessage>,
    ) -> Self {
        // Best effort: the header of a rejected message is untrusted, but its msg_id
        // is what lets someone find the message in the frontend's own logs.
        let header = message.and_then(|message| message.header().ok());
        Self {
            from,
            error: error.into(),
            msg_id: header.as_ref().map(|header| header.msg_id.clone()),
            msg_type: header.map(|header| header.msg_type),
            sender: None,
        }
    }

    /// Logs the rejection and puts it on the record, within the rate limit: past it,
    /// the rejection is counted in the window's `rejections_suppressed` record instead.
    /// Only a rejection on the record waits for what is known of its sender.
    pub(super) async fn report(&self, channel: Channel, sides: &Sides) {
        let verdict = sides.rejections.admit(
            channel,
            self.from,
            rejections::reason_kind(&self.error),
            self.sender.as_ref(),
            Instant::now(),
        );
        if let Some(closed) = verdict.closed {
            record_suppressed(&closed, sides).await;
        }
        if !verdict.record {
            tracing::debug!(%channel, from = self.from, reason = %self.error, "message rejected (counted)");
            return;
        }
        let sender = match &self.sender {
            Some(peer) => Some(peer.describe().await),
            None => None,
        };
        self.log(channel, sender.as_ref());
        if let Some(auditor) = &sides.auditor {
            auditor.event(&events::MessageRejected {
                channel: channel.name().to_owned(),
                from: self.from.to_owned(),
                reason: self.error.to_string(),
                msg_id: self.msg_id.clone(),
                rejected_msg_type: self.msg_type.clone(),
                sender: sender.as_ref().map(events::Sender::from),
                identity_note: identity_note(self.from),
            });
        }
    }

    pub(super) fn log(&self, channel: Channel, sender: Option<&SenderInfo>) {
        tracing::warn!(
            %channel,
            from = self.from,
            sender = %sender.map_or_else(|| "unknown".to_owned(), SenderInfo::to_string),
            reason = %self.error,
            msg_id = self.msg_id.as_deref().unwrap_or("unknown"),
            msg_type = self.msg_type.as_deref().unwrap_or("unknown"),
            "message rejected"
        );
    }
}

/// Logs and records the summary of a closed window of rejections.
pub(super) async fn record_suppressed(summary: &rejections::Suppressed, sides: &Sides) {
    let mut senders = Vec::with_capacity(summary.senders.len());
    for peer in &summary.senders {
        senders.push(peer.describe().await);
    }
    summary.log(&senders);
    if let Some(auditor) = &sides.auditor {
        let mut event = summary.event(&senders);
        event.identity_note = identity_note(summary.from);
        auditor.event(&event);
    }
}

/// Records of rejected frontend messages say whose name `user.*` is.
fn identity_note(from: &str) -> Option<String> {
    (from == "frontend").then(|| events::IDENTITY_NOTE.to_owned())
}

/// Checks a frontend message: size, framing, signature, header, replay; and, when
/// auditing, that all four JSON parts can be read, returned so they are read once.
pub(super) fn accept_from_frontend(
    frames: Frames,
    sides: &Sides,
) -> Result<(WireMessage, Header, Option<ParsedMessage>), Rejection> {
    let message = WireMessage::from_frames(frames, sides.max_message_bytes)
        .map_err(|error| Rejection::new("frontend", error, None))?;
    if let Err(error) = message.verify(&sides.frontend) {
        return Err(Rejection::new("frontend", error, Some(&message)));
    }
    // Read once: as JSON for the record when auditing, and the fields the relay needs.
    let auditing = sides.auditor.is_some();
    let header_json = if auditing {
        let json = serde_json::from_slice::<Value>(&message.header)
            .map_err(|error| bad_header(error, &message))?;
        Some(json)
    } else {
        None
    };
    let header = match &header_json {
        Some(json) => Header::deserialize(json).map_err(|error| bad_header(error, &message))?,
        None => message
            .header()
            .map_err(|error| Rejection::new("frontend", error, None))?,
    };
    let replay_check = crate::sync::lock(&sides.replay).check(&message.signature);
    if let Err(error) = replay_check {
        return Err(Rejection::new("frontend", error, Some(&message)));
    }
    let Some(header_json) = header_json else {
        return Ok((message, header, None));
    };
    // The record holds the message as the audit's JSON parser reads it: a part only the
    // kernel's more lenient parser reads (too deeply nested, NaN, invalid UTF-8) could
    // carry code the record does not show, so such a message never reaches the kernel.
    let read = |part: &'static str, bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes).map_err(|error| {
            Rejection::new(
                "frontend",
                RejectReason::UnreadableContent {
                    part,
                    error: error.to_string(),
                },
                Some(&message),
            )
        })
    };
    let parsed = ParsedMessage {
        header: header_json,
        parent_header: read("parent_header", &message.parent_header)?,
        metadata: read("metadata", &message.metadata)?,
        content: read("content", &message.content)?,
    };
    Ok((message, header, Some(parsed)))
}

/// A header that is not JSON, or whose msg_id or msg_type is not a string.
fn bad_header(error: serde_json::Error, message: &WireMessage) -> Rejection {
    Rejection::new(
        "frontend",
        WireError::BadHeader(error.to_string()),
        Some(message),
    )
}

/// Checks a kernel message: framing and the private key's signature.
fn accept_from_kernel(frames: Frames, sides: &Sides) -> Result<WireMessage, Rejection> {
    let message = WireMessage::from_frames(frames, usize::MAX)
        .map_err(|error| Rejection::new("kernel", error, None))?;
    if message.routing.is_empty() {
        return Err(Rejection::new(
            "kernel",
            WireError::MissingDelimiter,
            Some(&message),
        ));
    }
    check_kernel_signature(&message, sides)
        .map_err(|error| Rejection::new("kernel", error, Some(&message)))?;
    Ok(message)
}

/// Checks a kernel message's signature where that protects anything (see
/// [`Sides::check_kernel_signatures`]).
pub(super) fn check_kernel_signature(
    message: &WireMessage,
    sides: &Sides,
) -> Result<(), WireError> {
    if sides.check_kernel_signatures {
        message.verify(&sides.kernel)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::wire::{ReplayGuard, SignatureScheme, Signer, compose};

    fn sides(limit: usize) -> Sides {
        Sides {
            frontend: Signer::new(b"frontend", SignatureScheme::Sha256),
            kernel: Signer::new(b"kernel", SignatureScheme::Sha256),
            check_kernel_signatures: true,
            replay: Mutex::new(ReplayGuard::default()),
            max_message_bytes: limit,
            session: "test".into(),
            auditor: None,
            rejections: Default::default(),
            peers: Default::default(),
        }
    }

    fn signed_request(signer: &Signer) -> Frames {
        let mut message = compose(
            vec![Bytes::from_static(b"client")],
            "execute_request",
            "s",
            &serde_json::json!({"code": "1"}),
        );
        message.resign(signer);
        message.into_frames()
    }

    #[test]
    fn a_properly_signed_request_passes_once_and_its_replay_is_rejected() {
        let sides = sides(usize::MAX);
        let frames = signed_request(&sides.frontend);
        let (accepted, header, _) = accept_from_frontend(frames.clone(), &sides).expect("accepted");
        assert_eq!(header.msg_type, "execute_request");
        assert_eq!(accepted.routing, vec![Bytes::from_static(b"client")]);
        let replay = accept_from_frontend(frames, &sides).expect_err("replay");
        assert_eq!(replay.error, WireError::Replayed.into());
        assert!(replay.msg_id.is_some(), "diagnostic names the msg_id");
    }

    #[test]
    fn a_recased_copy_of_a_signed_request_is_a_replay() {
        let sides = sides(usize::MAX);
        let frames = signed_request(&sides.frontend);
        let signature_at = frames.len() - 5;
        let recased = |frames: &Frames| {
            let mut copy = frames.clone();
            copy[signature_at] = Bytes::from(copy[signature_at].to_ascii_uppercase());
            copy
        };
        accept_from_frontend(frames.clone(), &sides).expect("accepted");
        let replay = accept_from_frontend(recased(&frames), &sides).expect_err("replay");
        assert_eq!(replay.error, WireError::Replayed.into());
        // Never seen, but not spelt as Jupyter spells signatures: refused, as ipykernel does.
        let fresh = signed_request(&sides.frontend);
        let refused = accept_from_frontend(recased(&fresh), &sides).expect_err("upper case");
        assert_eq!(refused.error, WireError::NonCanonicalSignature.into());
        accept_from_frontend(fresh, &sides).expect("the lowercase original still runs once");
    }

    #[test]
    fn wrong_key_and_oversized_requests_are_rejected() {
        let sides = sides(10_000);
        let forged = signed_request(&Signer::new(b"guessed", SignatureScheme::Sha256));
        let rejection = accept_from_frontend(forged, &sides).expect_err("forged");
        assert_eq!(rejection.error, WireError::BadSignature.into());
        assert_eq!(rejection.msg_type.as_deref(), Some("execute_request"));

        let mut big = signed_request(&sides.frontend);
        big.push(Bytes::from(vec![0u8; 20_000]));
        let rejection = accept_from_frontend(big, &sides).expect_err("oversized");
        assert!(matches!(
            rejection.error,
            RejectReason::Wire(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn a_rejected_forgery_does_not_burn_the_genuine_signature() {
        let sides = sides(usize::MAX);
        let genuine = signed_request(&sides.frontend);
        let mut forged = genuine.clone();
        // Same signature, different content: fails verification, must not be remembered.
        let last = forged.len() - 1;
        forged[last] = Bytes::from_static(b"{\"code\":\"2\"}");
        assert_eq!(
            accept_from_frontend(forged, &sides)
                .expect_err("forged")
                .error,
            WireError::BadSignature.into()
        );
        accept_from_frontend(genuine, &sides).expect("genuine still accepted");
    }

    #[test]
    fn kernel_replies_over_tcp_must_carry_the_private_signature() {
        let sides = sides(usize::MAX);
        assert!(sides.check_kernel_signatures, "as over tcp");
        accept_from_kernel(signed_request(&sides.kernel), &sides).expect("kernel-signed");
        let rejection =
            accept_from_kernel(signed_request(&sides.frontend), &sides).expect_err("wrong key");
        assert_eq!(rejection.error, WireError::BadSignature.into());
    }
}
