//! Messages the proxy itself originates (e.g. `iopub_welcome`, its own
//! `kernel_info_request` while the kernel starts).

use bytes::Bytes;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::message::WireMessage;

/// The protocol version the proxy speaks in the messages it writes.
pub const JUPYTER_PROTOCOL_VERSION: &str = "5.5";

#[derive(Serialize)]
struct OwnHeader<'a> {
    msg_id: String,
    msg_type: &'a str,
    username: &'a str,
    session: &'a str,
    date: String,
    version: &'a str,
}

/// Builds an unsigned message of `msg_type` for session `session`; sign it with
/// [`WireMessage::resign`] before sending.
pub fn compose(
    routing: Vec<Bytes>,
    msg_type: &str,
    session: &str,
    content: &serde_json::Value,
) -> WireMessage {
    let date = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let header = OwnHeader {
        msg_id: uuid::Uuid::new_v4().to_string(),
        msg_type,
        username: "jupyter-audit",
        session,
        date,
        version: JUPYTER_PROTOCOL_VERSION,
    };
    // Serialising plain strings and a JSON value cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let content = serde_json::to_vec(content).unwrap_or_default();
    WireMessage::new(
        routing,
        Bytes::from(header),
        Bytes::from_static(b"{}"),
        Bytes::from_static(b"{}"),
        Bytes::from(content),
    )
}

/// Builds an unsigned message in answer to `parent` (its header becomes the parent
/// header, its routing ids the routing), as a kernel would.
pub fn compose_reply(
    parent: &WireMessage,
    msg_type: &str,
    session: &str,
    content: &serde_json::Value,
) -> WireMessage {
    let mut message = compose(parent.routing.clone(), msg_type, session, content);
    message.parent_header = parent.header.clone();
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_message_has_a_parseable_header() {
        let message = compose(
            vec![],
            "iopub_welcome",
            "s1",
            &serde_json::json!({"subscription": ""}),
        );
        let header = message.header().expect("valid header");
        assert_eq!(header.msg_type, "iopub_welcome");
        assert_eq!(header.msg_id.len(), 36);
        let full: serde_json::Value = serde_json::from_slice(&message.header).expect("json");
        assert_eq!(full["session"], "s1");
        assert_eq!(full["version"], JUPYTER_PROTOCOL_VERSION);
        assert!(
            full["date"]
                .as_str()
                .is_some_and(|date| date.ends_with('Z'))
        );
        assert_eq!(message.content.as_ref(), br#"{"subscription":""}"#);
    }
}
