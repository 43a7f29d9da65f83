//! Audit events: what the proxy puts on the record, and in what shape.
//!
//! The proxy observes Jupyter messages; this module turns each one that matters into
//! a record (an ECS-style JSON object: `event.*`, `jupyter.*`) and applies the size
//! policy. Identity (`user.*`, `process.*`, `host.*`), `@timestamp`, `event.sequence`
//! and the hash chain are added by the collector and the store, never here: the proxy
//! runs as the notebook user and cannot be trusted with them.

mod policy;
mod record;

pub use policy::SizePolicy;
pub use record::{
    Direction, Observation, RecordBuilder, SessionContext, event_record, now_rfc3339,
};

/// One audit record as the proxy hands it to the collector.
pub type Record = serde_json::Map<String, serde_json::Value>;

/// Whether a message must be on the record before the kernel may see it: everything
/// that can make the kernel run code. Requests known to only read kernel state are
/// recorded too, but without waiting.
pub fn needs_write_ahead(msg_type: &str) -> bool {
    !matches!(
        msg_type,
        "kernel_info_request"
            | "complete_request"
            | "inspect_request"
            | "history_request"
            | "is_complete_request"
            | "comm_info_request"
            | "interrupt_request"
            | "shutdown_request"
            | "input_reply"
    )
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
            "something_new",
        ] {
            assert!(needs_write_ahead(msg_type), "{msg_type}");
        }
        for msg_type in [
            "kernel_info_request",
            "complete_request",
            "input_reply",
            "shutdown_request",
        ] {
            assert!(!needs_write_ahead(msg_type), "{msg_type}");
        }
    }
}
