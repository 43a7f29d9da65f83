//! What a sender may write in a record, and the refusal of anything else.
//!
//! A proxy writes `event.action`, `event.created`, `event.kind`, `event.outcome` and the
//! `jupyter` object; identity, time, sequence and chain are the collector's and the
//! store's. Anything else is refused rather than stripped: a flat `"user.name"` next to
//! the stamped `user.name` is the same field to a SIEM that flattens records, and a
//! sender that writes one is worth a record of its own. `jupyter` stays open to new
//! fields (later versions add them), so its keys are checked by shape — plain names —
//! not against a list; what lies inside its values is the sender's.
//!
//! The review console is a sender of another kind ([`SenderKind::Console`]: a connection
//! from an OS account the collector names with `--console-user`). It writes only
//! `review_access` and `review_mark` records: `event`, `jupyter` with its own session id
//! (and the client's `resent`/`write_ahead_failed` marks) and a `review` object whose
//! keys and value types are checked against [`ReviewAccess`]/[`ReviewMark`]. A kernel's
//! connection may write neither those actions nor a `review` object: a notebook user
//! must not put words in a reviewer's mouth, and the console account must not write
//! into a kernel's trail.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::incoming::{SenderRecord, Slot};
use crate::audit::events::{
    Action, AuditEvent, EVENT_KIND, MARK_VIEW, Outcome, ReviewAccess, ReviewMark,
};

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

/// Who is on a connection, as far as what it may write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderKind {
    /// An audited kernel's proxy (or anything else that is not the console).
    Kernel,
    /// The review console (its OS account is one of `--console-user`).
    Console,
}

/// `jupyter` keys the console writes: its session, and the marks the collector client
/// adds to records it sends again or stores late.
const CONSOLE_JUPYTER_KEYS: &[&str] = &["session_id", "resent", "write_ahead_failed"];
/// `review` keys (schema: `$defs/review`).
const REVIEW_KEYS: &[&str] = &[
    "reviewer",
    "view",
    "session_id",
    "user",
    "query",
    "sequence",
    "outputs",
    "mark",
    "note",
];
/// `review.view` of a `review_access`.
const ACCESS_VIEWS: &[&str] = &[
    "sessions", "timeline", "session", "output", "search", "download", "health", "running",
];
/// Why a kernel's connection may not write review records.
const CONSOLE_ONLY: &str = "only the review console (an OS account the collector names with --console-user) writes review records";
/// Why the console's connection may write nothing else.
const REVIEW_ONLY: &str =
    "the review console's connection writes only review_access and review_mark records";

/// Checks that a kernel's `record` holds only what a sender may write; returns its
/// session id.
pub fn check(record: &SenderRecord) -> Result<String, FieldRefusal> {
    check_as(record, SenderKind::Kernel)
}

/// Checks that `record` holds only what a sender of `kind` may write; returns its
/// session id.
pub fn check_as(record: &SenderRecord, kind: SenderKind) -> Result<String, FieldRefusal> {
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
    let review_action = record
        .event_str("action")
        .and_then(Action::from_name)
        .is_some_and(Action::is_review);
    if kind == SenderKind::Console && !review_action {
        // Said first: whatever else is wrong with it, this is why it is refused.
        return Err(FieldRefusal::of(REVIEW_ONLY, "event.action"));
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
        let allowed = match kind {
            SenderKind::Kernel => is_plain_name(key),
            SenderKind::Console => CONSOLE_JUPYTER_KEYS.contains(&key.as_str()),
        };
        if !allowed {
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
    let action = record.event_str("action").and_then(Action::from_name);
    match kind {
        SenderKind::Kernel => {
            if action.is_some_and(Action::is_review) {
                return Err(FieldRefusal::of(
                    format!("event.action is the review console's: {CONSOLE_ONLY}"),
                    "event.action",
                ));
            }
            if !matches!(record.review, Slot::Missing) {
                return Err(FieldRefusal::of(
                    format!("a review object: {CONSOLE_ONLY}"),
                    "review",
                ));
            }
        }
        SenderKind::Console => check_review(action, record.event_str("outcome"), &record.review)?,
    }
    match record.jupyter_str("session_id") {
        Some(session) if !session.is_empty() => Ok(session),
        _ => Err(FieldRefusal::of(
            "jupyter.session_id is missing or not a non-empty string",
            "jupyter.session_id",
        )),
    }
}

/// The console's record: a review action, and a `review` object that its type reads.
fn check_review(
    action: Option<Action>,
    outcome: Option<&str>,
    review: &Slot<serde_json::Map<String, Value>>,
) -> Result<(), FieldRefusal> {
    let Some(action) = action.filter(|action| action.is_review()) else {
        return Err(FieldRefusal::of(REVIEW_ONLY, "event.action"));
    };
    // A refused page (a signed-in Hub user without the scope) is a review_access with
    // outcome failure; a mark is always a success.
    let outcome_allowed = match action {
        Action::ReviewAccess => outcome.is_none_or(|outcome| {
            outcome == Outcome::Success.as_str() || outcome == Outcome::Failure.as_str()
        }),
        _ => outcome.is_none_or(|outcome| outcome == Outcome::Success.as_str()),
    };
    if !outcome_allowed {
        return Err(FieldRefusal::of(
            "a review_mark's event.outcome is success, a review_access's success or failure",
            "event.outcome",
        ));
    }
    let review = match review {
        Slot::Object(review) => review,
        Slot::NotObject => return Err(FieldRefusal::of("review is not an object", "review")),
        Slot::Missing => {
            return Err(FieldRefusal::of(
                "a review record has no review object",
                "review",
            ));
        }
    };
    let foreign: Vec<String> = review
        .keys()
        .filter(|key| !REVIEW_KEYS.contains(&key.as_str()))
        .take(MAX_NAMED_FIELDS)
        .map(|key| capped(&format!("review.{key}")))
        .collect();
    if !foreign.is_empty() {
        return Err(FieldRefusal {
            reason: format!("fields outside the schema: {}", foreign.join(", ")),
            fields: foreign,
        });
    }
    let fields = Value::Object(review.clone());
    let wrong = |reason: &str, field: &str| Err(FieldRefusal::of(reason.to_owned(), field));
    let (reviewer, view) = match action {
        Action::ReviewMark => {
            let Some(mark) = ReviewMark::read(&fields) else {
                return wrong("review has a field of the wrong type", "review");
            };
            if !["reviewed", "flagged"].contains(&mark.mark.as_str()) {
                return wrong("review.mark is neither reviewed nor flagged", "review.mark");
            }
            if mark.session_id.is_empty() {
                return wrong("review.session_id is missing", "review.session_id");
            }
            if !review.contains_key("note") {
                return wrong("review.note is missing", "review.note");
            }
            (mark.reviewer, (mark.view == MARK_VIEW).then_some(()))
        }
        _ => {
            let Some(access) = ReviewAccess::read(&fields) else {
                return wrong("review has a field of the wrong type", "review");
            };
            let view = ACCESS_VIEWS.contains(&access.view.as_str()).then_some(());
            (access.reviewer, view)
        }
    };
    if reviewer.name.is_empty() || !review.get("reviewer").is_some_and(reviewer_shape) {
        return wrong(
            "review.reviewer needs a name and scopes, and nothing else",
            "review.reviewer",
        );
    }
    if view.is_none() {
        return wrong(
            "review.view is not one of this action's views",
            "review.view",
        );
    }
    Ok(())
}

/// `review.reviewer` holds `name` and `scopes` and nothing else.
fn reviewer_shape(reviewer: &Value) -> bool {
    reviewer.as_object().is_some_and(|reviewer| {
        reviewer.len() == 2 && reviewer.contains_key("name") && reviewer.contains_key("scopes")
    })
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

    fn review_record() -> Value {
        json!({
            "event": {"action": "review_access", "created": "2024-05-01T12:00:00.123Z",
                      "kind": "event", "outcome": "success"},
            "jupyter": {"session_id": "console-1"},
            "review": {"reviewer": {"name": "auditor", "scopes": ["custom:jupyter-audit:read"]},
                       "view": "session", "session_id": "s1", "outputs": false}
        })
    }

    fn console_refusal(value: Value) -> FieldRefusal {
        check_as(&record(value), SenderKind::Console).expect_err("refused")
    }

    #[test]
    fn the_console_writes_review_records_and_nothing_else() {
        assert_eq!(
            check_as(&record(review_record()), SenderKind::Console),
            Ok("console-1".to_owned())
        );
        let mark = json!({
            "event": {"action": "review_mark", "kind": "event", "outcome": "success"},
            "jupyter": {"session_id": "console-1", "resent": true},
            "review": {"reviewer": {"name": "auditor", "scopes": []}, "view": "mark",
                       "session_id": "s1", "mark": "reviewed", "note": ""}
        });
        assert!(check_as(&record(mark.clone()), SenderKind::Console).is_ok());
        // A kernel's record, or an event of a kernel's session, from the console.
        for action in ["execute_request", "session_start", "audit_gap", "stream"] {
            let mut value = proxy_record();
            value["event"]["action"] = json!(action);
            let refused = console_refusal(value);
            assert_eq!(refused.fields, ["event.action"], "{action}");
            assert!(refused.reason.contains("only review_access"), "{refused:?}");
        }
        for (path, bad) in [
            (vec!["jupyter", "code"], json!("import os")),
            (vec!["review", "extra"], json!(1)),
            (vec!["review", "sequence"], json!("7")),
            (vec!["review", "view"], json!("everything")),
            (vec!["review", "reviewer", "name"], json!("")),
            (vec!["review", "reviewer", "admin"], json!(true)),
        ] {
            let mut value = review_record();
            let (last, parents) = path.split_last().expect("a path");
            let mut node = &mut value;
            for key in parents {
                node = &mut node[*key];
            }
            node[*last] = bad;
            assert!(
                check_as(&record(value), SenderKind::Console).is_err(),
                "{path:?}"
            );
        }
        // A page refused to a Hub user is a review_access with outcome failure; a mark
        // is never a failure, and no other outcome is taken.
        let mut denied = review_record();
        denied["event"]["outcome"] = json!("failure");
        denied["review"]["reviewer"]["scopes"] = json!([]);
        assert!(check_as(&record(denied), SenderKind::Console).is_ok());
        let mut failed_mark = mark.clone();
        failed_mark["event"]["outcome"] = json!("failure");
        assert_eq!(console_refusal(failed_mark).fields, ["event.outcome"]);
        let mut unknown = review_record();
        unknown["event"]["outcome"] = json!("unknown");
        assert!(check_as(&record(unknown), SenderKind::Console).is_err());
        let mut no_review = review_record();
        no_review.as_object_mut().expect("object").remove("review");
        assert_eq!(console_refusal(no_review).fields, ["review"]);
        let mut bad_mark = mark;
        bad_mark["review"]["mark"] = json!("approved");
        assert_eq!(console_refusal(bad_mark).fields, ["review.mark"]);
    }

    #[test]
    fn a_kernel_writes_no_review_record() {
        let refused = refusal(review_record());
        assert!(refused.reason.contains("--console-user"), "{refused:?}");
        let mut value = review_record();
        value["event"]["action"] = json!("execute_request");
        let refused = refusal(value);
        assert_eq!(refused.fields, ["review"]);
        assert!(refused.reason.contains("--console-user"), "{refused:?}");
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
