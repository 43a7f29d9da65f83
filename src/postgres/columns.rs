//! The columns of a `records` row that are copies of fields of its stored line: what
//! reviewers filter on, taken out once by the forwarder.

use serde::Deserialize;

/// The review columns of one stored line (all optional but the action).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordColumns {
    /// `@timestamp`, RFC 3339 as stored.
    pub time: Option<String>,
    pub action: String,
    pub user_name: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub kernel_id: Option<String>,
    pub msg_id: Option<String>,
    pub parent_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "@timestamp")]
    timestamp: Option<serde_json::Value>,
    event: Option<Event>,
    user: Option<User>,
    jupyter: Option<Jupyter>,
}

#[derive(Deserialize)]
struct Event {
    action: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct User {
    name: Option<serde_json::Value>,
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jupyter {
    session_id: Option<serde_json::Value>,
    kernel_id: Option<serde_json::Value>,
    msg_id: Option<serde_json::Value>,
    parent_msg_id: Option<serde_json::Value>,
}

fn text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    }
}

impl RecordColumns {
    /// The columns of a stored line (a JSON object). Fields that are missing or not
    /// strings are `None`; a line that is not a JSON object is an error.
    pub fn of_line(line: &[u8]) -> Result<Self, String> {
        let parsed: Line = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        let jupyter = parsed.jupyter;
        let (session_id, kernel_id, msg_id, parent_msg_id) = match jupyter {
            Some(j) => (
                text(j.session_id),
                text(j.kernel_id),
                text(j.msg_id),
                text(j.parent_msg_id),
            ),
            None => (None, None, None, None),
        };
        let (user_name, user_id) = match parsed.user {
            Some(user) => (text(user.name), text(user.id)),
            None => (None, None),
        };
        Ok(RecordColumns {
            time: text(parsed.timestamp),
            action: text(parsed.event.and_then(|e| e.action)).unwrap_or_default(),
            user_name,
            user_id,
            session_id,
            kernel_id,
            msg_id,
            parent_msg_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_come_from_the_line_and_odd_types_are_left_out() {
        let line = br#"{"@timestamp":"2026-01-01T00:00:00.5Z","event":{"action":"execute_request","sequence":3},"user":{"id":"1000","name":"alice"},"jupyter":{"session_id":"s1","kernel_id":"k1","msg_id":"m1","parent_msg_id":7}}"#;
        let columns = RecordColumns::of_line(line).unwrap();
        assert_eq!(columns.time.as_deref(), Some("2026-01-01T00:00:00.5Z"));
        assert_eq!(columns.action, "execute_request");
        assert_eq!(columns.user_name.as_deref(), Some("alice"));
        assert_eq!(columns.user_id.as_deref(), Some("1000"));
        assert_eq!(columns.session_id.as_deref(), Some("s1"));
        assert_eq!(columns.msg_id.as_deref(), Some("m1"));
        assert_eq!(columns.parent_msg_id, None);
        assert!(RecordColumns::of_line(b"[1]").is_err());
    }
}
