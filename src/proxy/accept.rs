//! What the relay accepts. From frontends: size, framing, the frontend key's signature,
//! the header, replays and, when auditing, four JSON parts the audit can read (read
//! once, here). From the kernel: framing and, where it protects anything, the private
//! key's signature. Whatever fails becomes a [`Rejection`].

use serde::Deserialize;
use serde_json::Value;

use super::Relay;
use super::rejections::{RejectReason, Rejection};
use crate::audit::{Direction, ParsedMessage};
use crate::connection::Channel;
use crate::transport::Frames;
use crate::wire::{Header, WireError, WireMessage};

/// Checks a frontend message: size, framing, signature, header, replay; and, when
/// auditing, that all four JSON parts can be read, returned so they are read once.
pub(super) fn from_frontend(
    frames: Frames,
    relay: &Relay,
) -> Result<(WireMessage, Header, Option<ParsedMessage>), Rejection> {
    let message = WireMessage::from_frames(frames, relay.max_message_bytes)
        .map_err(|error| Rejection::new(Direction::FromFrontend, error, None))?;
    if let Err(error) = message.verify(&relay.frontend) {
        return Err(Rejection::new(
            Direction::FromFrontend,
            error,
            Some(&message),
        ));
    }
    // Read once: as JSON for the record when auditing, and the fields the relay needs.
    let auditing = relay.auditor.is_some();
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
            .map_err(|error| Rejection::new(Direction::FromFrontend, error, None))?,
    };
    let replay_check = crate::sync::lock(&relay.replay).check(&message.signature);
    if let Err(error) = replay_check {
        return Err(Rejection::new(
            Direction::FromFrontend,
            error,
            Some(&message),
        ));
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
                Direction::FromFrontend,
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
        Direction::FromFrontend,
        WireError::BadHeader(error.to_string()),
        Some(message),
    )
}

/// Checks a kernel message: framing (replies on shell, control and stdin carry the
/// frontend's routing id back) and the private key's signature where that protects
/// anything (see [`Relay::check_kernel_signatures`]).
pub(super) fn from_kernel(
    frames: Frames,
    relay: &Relay,
    channel: Channel,
) -> Result<WireMessage, Rejection> {
    let message = WireMessage::from_frames(frames, usize::MAX)
        .map_err(|error| Rejection::new(Direction::FromKernel, error, None))?;
    if channel != Channel::Iopub && message.routing.is_empty() {
        return Err(Rejection::new(
            Direction::FromKernel,
            WireError::MissingDelimiter,
            Some(&message),
        ));
    }
    if relay.check_kernel_signatures {
        message
            .verify(&relay.kernel)
            .map_err(|error| Rejection::new(Direction::FromKernel, error, Some(&message)))?;
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::wire::{ReplayGuard, SignatureScheme, Signer, compose};

    fn relay(limit: usize) -> Relay {
        Relay {
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
        let relay = relay(usize::MAX);
        let frames = signed_request(&relay.frontend);
        let (accepted, header, _) = from_frontend(frames.clone(), &relay).expect("accepted");
        assert_eq!(header.msg_type, "execute_request");
        assert_eq!(accepted.routing, vec![Bytes::from_static(b"client")]);
        let replay = from_frontend(frames, &relay).expect_err("replay");
        assert_eq!(replay.error, WireError::Replayed.into());
        assert!(replay.msg_id.is_some(), "diagnostic names the msg_id");
    }

    #[test]
    fn a_recased_copy_of_a_signed_request_is_a_replay() {
        let relay = relay(usize::MAX);
        let frames = signed_request(&relay.frontend);
        let signature_at = frames.len() - 5;
        let recased = |frames: &Frames| {
            let mut copy = frames.clone();
            copy[signature_at] = Bytes::from(copy[signature_at].to_ascii_uppercase());
            copy
        };
        from_frontend(frames.clone(), &relay).expect("accepted");
        let replay = from_frontend(recased(&frames), &relay).expect_err("replay");
        assert_eq!(replay.error, WireError::Replayed.into());
        // Never seen, but not spelt as Jupyter spells signatures: refused, as ipykernel does.
        let fresh = signed_request(&relay.frontend);
        let refused = from_frontend(recased(&fresh), &relay).expect_err("upper case");
        assert_eq!(refused.error, WireError::NonCanonicalSignature.into());
        from_frontend(fresh, &relay).expect("the lowercase original still runs once");
    }

    #[test]
    fn wrong_key_and_oversized_requests_are_rejected() {
        let relay = relay(10_000);
        let forged = signed_request(&Signer::new(b"guessed", SignatureScheme::Sha256));
        let rejection = from_frontend(forged, &relay).expect_err("forged");
        assert_eq!(rejection.error, WireError::BadSignature.into());
        assert_eq!(rejection.msg_type.as_deref(), Some("execute_request"));

        let mut big = signed_request(&relay.frontend);
        big.push(Bytes::from(vec![0u8; 20_000]));
        let rejection = from_frontend(big, &relay).expect_err("oversized");
        assert!(matches!(
            rejection.error,
            RejectReason::Wire(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn a_rejected_forgery_does_not_burn_the_genuine_signature() {
        let relay = relay(usize::MAX);
        let genuine = signed_request(&relay.frontend);
        let mut forged = genuine.clone();
        // Same signature, different content: fails verification, must not be remembered.
        let last = forged.len() - 1;
        forged[last] = Bytes::from_static(b"{\"code\":\"2\"}");
        assert_eq!(
            from_frontend(forged, &relay).expect_err("forged").error,
            WireError::BadSignature.into()
        );
        from_frontend(genuine, &relay).expect("genuine still accepted");
    }

    #[test]
    fn kernel_replies_over_tcp_must_carry_the_private_signature() {
        let relay = relay(usize::MAX);
        assert!(relay.check_kernel_signatures, "as over tcp");
        from_kernel(signed_request(&relay.kernel), &relay, Channel::Shell).expect("kernel-signed");
        let rejection = from_kernel(signed_request(&relay.frontend), &relay, Channel::Shell)
            .expect_err("wrong key");
        assert_eq!(rejection.error, WireError::BadSignature.into());
    }
}
