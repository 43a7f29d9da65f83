//! What a sender may write in a record, and the refusal of anything else.
//!
//! A proxy writes `event.action`, `event.created`, `event.kind`, `event.outcome` and the
//! `jupyter` object; identity, time, sequence and chain are the collector's and the
//! store's. Anything else is refused rather than stripped: a flat `"user.name"` next to
//! the stamped `user.name` is the same field to a SIEM that flattens records, and a
//! sender that writes one is worth a record of its own. `jupyter` stays open to new
//! fields (later versions add them), so its keys are checked by shape — plain names —
//! not against a list; what lies inside its values is the sender's.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::incoming::{SenderRecord, Slot};
use crate::audit::events::{Action, EVENT_KIND, Outcome};

/// `event` keys a sender may write.
const SENDER_EVENT_KEYS: &[&str] = &["action", "created", "kind", "outcome"];
/// Actions only the collector writes ([`Action::is_collectors`]), and any that starts
/// with this: a sender's record with one would read as the collector's word.
const COLLECTOR_ACTION_PREFIX: &str = "collector_";
/// Longest `jupyter` key.
const MAX_KEY_CHARS: usize = 64;
/// Field names named in one refusal, and the longest name kept (a refusal record must
/// stay small whatever the sender wrote).
const MAX_NAMED_FIELDS: usize = 16;
const MAX_NAME_CHARS: usize = 128;

/// Why a record was refused: a sentence, and the offending field names (as dotted
/// paths, capped) for the refusal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRefusal {
    pub reason: String,
    pub fields: Vec<String>,
}

impl FieldRefusal {
    fn of(reason: impl Into<String>, field: &str) -> Self {
        FieldRefusal {
            reason: reason.into(),
            fields: vec![capped(field)],
        }
    }
}

/// Checks that `record` holds only what a sender may write; returns its session id.
pub fn check(record: &SenderRecord) -> Result<String, FieldRefusal> {
    if !record.duplicates.is_empty() {
        let shown = record.duplicates.len().min(MAX_NAMED_FIELDS);
        let fields: Vec<String> = record.duplicates[..shown]
            .iter()
            .map(|f| capped(f))
            .collect();
        return Err(FieldRefusal {
            reason: format!(
                "keys sent more than once (readers would not agree on their value): {}",
                fields.join(", ")
            ),
            fields,
        });
    }
    let mut foreign = record.other_keys.clone();
    foreign.sort();
    let event = match &record.event {
        Slot::Object(event) => event,
        Slot::NotObject => return Err(FieldRefusal::of("event is not an object", "event")),
        Slot::Missing => {
            return Err(FieldRefusal::of("the record has no event object", "event"));
        }
    };
    for key in event.keys() {
        if !SENDER_EVENT_KEYS.contains(&key.as_str()) {
            foreign.push(format!("event.{key}"));
        }
    }
    let jupyter = match &record.jupyter {
        Slot::Object(jupyter) => jupyter,
        Slot::NotObject => return Err(FieldRefusal::of("jupyter is not an object", "jupyter")),
        Slot::Missing => {
            return Err(FieldRefusal::of(
                "the record has no jupyter object",
                "jupyter",
            ));
        }
    };
    for key in jupyter.keys() {
        if !is_plain_name(key) {
            foreign.push(format!("jupyter.{key}"));
        }
    }
    if !foreign.is_empty() {
        let shown = foreign.len().min(MAX_NAMED_FIELDS);
        let mut fields: Vec<String> = foreign[..shown].iter().map(|f| capped(f)).collect();
        if foreign.len() > shown {
            fields.push(format!("… and {} more", foreign.len() - shown));
        }
        return Err(FieldRefusal {
            reason: format!(
                "fields only the collector writes, or outside the schema: {}",
                fields.join(", ")
            ),
            fields,
        });
    }
    check_event_values(event)?;
    match record.jupyter_str("session_id") {
        Some(session) if !session.is_empty() => Ok(session),
        _ => Err(FieldRefusal::of(
            "jupyter.session_id is missing or not a non-empty string",
            "jupyter.session_id",
        )),
    }
}

fn check_event_values(event: &serde_json::Map<String, Value>) -> Result<(), FieldRefusal> {
    let action = match event.get("action") {
        Some(Value::String(action)) if !action.is_empty() => action,
        _ => {
            return Err(FieldRefusal::of(
                "event.action is missing or not a non-empty string",
                "event.action",
            ));
        }
    };
    if action.starts_with(COLLECTOR_ACTION_PREFIX)
        || Action::from_name(action).is_some_and(Action::is_collectors)
    {
        return Err(FieldRefusal::of(
            format!(
                "event.action {:?} is the collector's to write",
                capped(action)
            ),
            "event.action",
        ));
    }
    if let Some(created) = event.get("created") {
        let readable = created
            .as_str()
            .is_some_and(|text| OffsetDateTime::parse(text, &Rfc3339).is_ok());
        if !readable {
            return Err(FieldRefusal::of(
                "event.created is not an RFC 3339 time",
                "event.created",
            ));
        }
    }
    if event.get("kind").is_some_and(|kind| kind != EVENT_KIND) {
        return Err(FieldRefusal::of(
            "event.kind is not \"event\"",
            "event.kind",
        ));
    }
    if let Some(outcome) = event.get("outcome")
        && outcome.as_str().and_then(Outcome::from_name).is_none()
    {
        return Err(FieldRefusal::of(
            "event.outcome is neither \"success\" nor \"failure\"",
            "event.outcome",
        ));
    }
    Ok(())
}

/// A key a flattening SIEM keeps as one name: a lowercase letter, then lowercase
/// letters, digits and underscores (no dots, no `@`).
fn is_plain_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_lowercase())
        && key.len() <= MAX_KEY_CHARS
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `text` cut to a size fit for a refusal record (on a character boundary).
pub fn capped(text: &str) -> String {
    match text.char_indices().nth(MAX_NAME_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> SenderRecord {
        SenderRecord::parse(&value.to_string()).expect("an object")
    }

    fn proxy_record() -> Value {
        json!({
            "event": {"action": "execute_request", "created": "2024-05-01T12:00:00.123Z",
                      "kind": "event", "outcome": "success"},
            "jupyter": {"session_id": "s1", "msg_id": "m", "code": "1",
                        "data": {"text/plain": "x", "user.name": "inside a value is fine"},
                        "request": {"header": {"msg.id": 1}}, "record_too_large": 5}
        })
    }

    fn refusal(value: Value) -> FieldRefusal {
        check(&record(value)).expect_err("refused")
    }

    #[test]
    fn what_the_proxy_writes_is_accepted() {
        assert_eq!(check(&record(proxy_record())), Ok("s1".to_owned()));
    }

    #[test]
    fn identity_time_and_chain_fields_are_refused_flat_or_nested() {
        for key in [
            "user.name",
            "host.name",
            "process.pid",
            "@timestamp",
            "user",
            "group",
            "process",
            "host",
            "chain",
            "collector",
            "labels",
        ] {
            let mut value = proxy_record();
            value[key] = json!("forged");
            let refused = refusal(value);
            assert_eq!(refused.fields, [key], "{key}");
            assert!(refused.reason.contains(key), "{refused:?}");
        }
    }

    #[test]
    fn event_fields_of_the_store_and_collector_are_refused() {
        for key in ["sequence", "ingested", "severity", "action.name"] {
            let mut value = proxy_record();
            value["event"][key] = json!(1);
            assert_eq!(refusal(value).fields, [format!("event.{key}")]);
        }
        for (key, bad) in [
            ("action", json!("")),
            ("action", json!(5)),
            ("action", json!("collector_start")),
            ("action", json!("forged_record")),
            ("action", json!("record_refused")),
            ("action", json!("refusals_suppressed")),
            // A user over a fairness limit is the collector's word, never a sender's.
            ("action", json!("limit_exceeded")),
            ("created", json!("yesterday")),
            ("kind", json!("alert")),
            ("outcome", json!("unknown")),
        ] {
            let mut value = proxy_record();
            value["event"][key] = bad.clone();
            assert_eq!(refusal(value).fields, [format!("event.{key}")], "{bad}");
        }
    }

    #[test]
    fn jupyter_keys_must_be_plain_names() {
        for key in ["user.name", "User", "_x", "9lives", "a-b", "a b", "", "é"] {
            let mut value = proxy_record();
            value["jupyter"][key] = json!(1);
            assert_eq!(refusal(value).fields, [format!("jupyter.{key}")], "{key:?}");
        }
        let mut value = proxy_record();
        value["jupyter"]["x".repeat(MAX_KEY_CHARS + 1)] = json!(1);
        assert!(check(&record(value)).is_err());
        let mut value = proxy_record();
        value["jupyter"]["a".repeat(MAX_KEY_CHARS)] = json!(1);
        assert!(check(&record(value)).is_ok());
    }

    #[test]
    fn a_record_needs_an_event_a_jupyter_object_and_a_session() {
        assert_eq!(
            refusal(json!({"jupyter": {"session_id": "s"}})).fields,
            ["event"]
        );
        assert_eq!(
            refusal(json!({"event": {"action": "x"}})).fields,
            ["jupyter"]
        );
        assert_eq!(
            refusal(json!({"event": {"action": "x"}, "jupyter": {"session_id": ""}})).fields,
            ["jupyter.session_id"]
        );
        assert_eq!(
            refusal(json!({"event": {"action": "x"}, "jupyter": {"session_id": 7}})).fields,
            ["jupyter.session_id"]
        );
    }

    #[test]
    fn a_refusal_stays_small_whatever_was_sent() {
        let mut value = proxy_record();
        for n in 0..100 {
            value[format!("{}.{n}", "k".repeat(1000))] = json!(n);
        }
        let refused = refusal(value);
        assert_eq!(refused.fields.len(), MAX_NAMED_FIELDS + 1);
        assert!(
            refused
                .fields
                .iter()
                .all(|f| f.chars().count() <= MAX_NAME_CHARS + 1)
        );
        assert!(refused.reason.len() < 4096, "{}", refused.reason.len());
    }
}
