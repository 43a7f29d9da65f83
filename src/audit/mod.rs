//! Audit events: what the proxy puts on the record, and in what shape.
//!
//! The proxy observes Jupyter messages; this module turns each one that matters into
//! a record (an ECS-style JSON object: `event.*`, `jupyter.*`) and applies the size
//! policy. Identity (`user.*`, `process.*`, `host.*`), `@timestamp`, `event.sequence`
//! and the hash chain are added by the collector and the store, never here: the proxy
//! runs as the notebook user and cannot be trusted with them. [`events`] is the
//! vocabulary of records that are not messages, shared with the collector and the
//! review tools.

pub mod events;
mod policy;
mod record;

pub use policy::{CutText, InvalidBase64, KeptBytes, KeptText, SizePolicy};
pub use record::{
    Direction, OUTPUT_RECORD_BUDGET, Observation, ParsedMessage, RecordBuilder, SessionContext,
    UnreadablePart, event_record, now_rfc3339, record_event, review_record,
};

/// One audit record as the proxy hands it to the collector.
pub type Record = serde_json::Map<String, serde_json::Value>;

/// Frontend messages larger than this are recorded before the kernel sees them, whatever
/// their type: the inert request types are tiny in every real client, and a large one
/// is either hostile or new to this version.
pub const INERT_MESSAGE_BYTES: usize = 64 * 1024;

/// Whether a frontend message must be on the record, whole, before the kernel may see
/// it: everything the kernel may act on in a way that runs code, which is every type
/// but the few whose content the kernel only reads to describe itself or to stop. Code
/// completion, inspection and `is_complete` are write-ahead too: the kernel evaluates
/// names and runs input transformers for them; so is `input_reply`, whose value a cell
/// may `exec`. `size` is the message's size on the wire.
pub fn needs_write_ahead(msg_type: &str, size: usize) -> bool {
    let inert = matches!(
        msg_type,
        "kernel_info_request"
            | "comm_info_request"
            | "history_request"
            | "interrupt_request"
            | "shutdown_request"
    );
    !inert || size > INERT_MESSAGE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_running_and_unknown_requests_are_write_ahead() {
        for msg_type in [
            "execute_request",
            "comm_msg",
            "comm_open",
            "debug_request",
            "create_subshell_request",
            "complete_request",
            "inspect_request",
            "is_complete_request",
            "input_reply",
            "something_new",
        ] {
            assert!(needs_write_ahead(msg_type, 100), "{msg_type}");
        }
        for msg_type in [
            "kernel_info_request",
            "comm_info_request",
            "history_request",
            "interrupt_request",
            "shutdown_request",
        ] {
            assert!(!needs_write_ahead(msg_type, 100), "{msg_type}");
            assert!(
                needs_write_ahead(msg_type, INERT_MESSAGE_BYTES + 1),
                "a large {msg_type} is not inert"
            );
        }
    }
}
