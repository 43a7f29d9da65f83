//! What a frontend gets when a request cannot be recorded before it runs (block
//! policy): the answers a kernel gives to a failed request, saying why, so the user
//! sees an ordinary error in the notebook and the kernel never sees the request.

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Relay;
use crate::collector::client::AuditError;
use crate::transport::Frames;
use crate::wire::{WireMessage, compose_reply};

/// The exception name frontends show when the collector cannot take the record.
pub(crate) const UNAVAILABLE_ENAME: &str = "AuditLogUnavailable";
/// The exception name frontends show when the request itself cannot be recorded.
pub(crate) const NOT_RECORDABLE_ENAME: &str = "AuditRecordRefused";

/// The exception name and text a user sees for a refused request.
pub(crate) fn refusal(reason: &AuditError) -> (&'static str, String) {
    match reason {
        AuditError::TooLarge { .. } => (
            NOT_RECORDABLE_ENAME,
            format!(
                "Execution refused: this request cannot be put on the audit record, so \
                 nothing was run ({reason}). Sending it again will not help; make it \
                 smaller."
            ),
        ),
        AuditError::NotStored(_) => (
            NOT_RECORDABLE_ENAME,
            format!(
                "Execution refused: the audit collector did not store this request, so \
                 nothing was run ({reason}). If this persists, contact your administrator."
            ),
        ),
        AuditError::Refused(_) => (
            UNAVAILABLE_ENAME,
            format!(
                "Execution refused: the audit log does not accept this kernel, so nothing \
                 was run ({reason}). If this persists, contact your administrator."
            ),
        ),
        AuditError::Unavailable(_) | AuditError::Timeout(_) | AuditError::Stopped => (
            UNAVAILABLE_ENAME,
            format!(
                "Execution refused: the audit log is unavailable, so nothing was run \
                 ({reason}). Try again in a moment; if this persists, contact your \
                 administrator."
            ),
        ),
    }
}

/// Answers `request` with an error, on its channel and (for executions) on iopub.
pub(super) async fn refuse(
    request: &WireMessage,
    msg_type: &str,
    reason: &AuditError,
    relay: &Relay,
    to_frontend: &mpsc::Sender<Frames>,
    iopub: &mpsc::Sender<Frames>,
) {
    let (ename, text) = refusal(reason);
    let error = json!({
        "ename": ename,
        "evalue": text,
        "traceback": [format!("{ename}: {text}")],
    });
    let Some(reply_type) = msg_type
        .strip_suffix("_request")
        .map(|base| format!("{base}_reply"))
    else {
        // comm messages and other one-way messages have no reply to carry the error.
        tracing::warn!(msg_type, %reason, "message refused: the audit log is unavailable");
        return;
    };
    if msg_type == "execute_request" {
        // nbclient and JupyterLab finish a cell on its idle status: busy, error, idle.
        let published = [
            ("status", json!({"execution_state": "busy"})),
            ("error", error.clone()),
            ("status", json!({"execution_state": "idle"})),
        ];
        for (kind, content) in published {
            let mut message = compose_reply(request, kind, &relay.session, &content);
            message.routing.clear();
            send(message, relay, iopub).await;
        }
    }
    let mut content = error;
    if let Value::Object(fields) = &mut content {
        fields.insert("status".into(), json!("error"));
        if msg_type == "execute_request" {
            fields.insert("execution_count".into(), Value::Null);
            fields.insert("user_expressions".into(), json!({}));
            fields.insert("payload".into(), json!([]));
        }
    }
    send(
        compose_reply(request, &reply_type, &relay.session, &content),
        relay,
        to_frontend,
    )
    .await;
}

async fn send(mut message: WireMessage, relay: &Relay, to: &mpsc::Sender<Frames>) {
    message.resign(&relay.frontend);
    let _ = to.send(message.into_frames()).await;
}
