//! Reading stored records: their fields, their texts as the size policy kept them, their
//! times, and making any of it safe to print on a reviewer's terminal.

use std::borrow::Cow;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::events::AuditEvent;
use crate::audit::{CutText, KeptText};

/// The uid of the OS account that sent a record: `process.user.id`, or `user.id` in
/// records written before the person and the account were told apart.
pub fn os_user_id(value: &Value) -> Option<&str> {
    str_at(value, &["process", "user", "id"]).or_else(|| str_at(value, &["user", "id"]))
}

/// The string at `path` (`["jupyter", "session_id"]`), if there is one.
pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

/// The value at `path`, if there is one.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(key))
}

/// A `jupyter.*` string field.
pub fn jupyter<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    str_at(value, &["jupyter", key])
}

/// `event.action` (empty when missing).
pub fn action(value: &Value) -> &str {
    str_at(value, &["event", "action"]).unwrap_or_default()
}

/// The event a record of `E`'s action holds, read through its type from `review` (the
/// console's events), `jupyter` (proxy events) or `collector` (the collector's; the
/// console's records have a `jupyter` object too, so `review` is looked at first, and
/// only the console's records have one). Missing fields take their
/// defaults; a record whose fields have the wrong types was not written by
/// jupyter-audit and reads as the default event.
pub fn event<E: AuditEvent + Default>(value: &Value) -> E {
    value
        .get("review")
        .or_else(|| value.get("jupyter"))
        .or_else(|| value.get("collector"))
        .and_then(E::read)
        .unwrap_or_default()
}

/// The verified user: `user.name`, else `user.id`.
pub fn user(value: &Value) -> Option<&str> {
    str_at(value, &["user", "name"]).or_else(|| str_at(value, &["user", "id"]))
}

/// `@timestamp`, parsed.
pub fn timestamp(value: &Value) -> Option<OffsetDateTime> {
    parse_rfc3339(str_at(value, &["@timestamp"])?)
}

pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// A time for tables: `2024-05-01 12:00:00.123` in UTC.
pub fn display_time(time: OffsetDateTime) -> String {
    let utc = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{} {:02}:{:02}:{:02}.{:03}",
        utc.date(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.millisecond()
    )
}

/// A record's `@timestamp` for tables (as stored when it is not RFC 3339).
pub fn display_timestamp(value: &Value) -> String {
    match timestamp(value) {
        Some(time) => display_time(time),
        None => str_at(value, &["@timestamp"]).unwrap_or("?").to_owned(),
    }
}

/// A text as the size policy kept it ([`KeptText`]): a string, or a cut text, which
/// comes back as head, a line saying what is missing, and tail.
pub fn stored_text(value: &Value) -> Option<Cow<'_, str>> {
    KeptText::read(value).map(kept_text)
}

/// A kept text as a reviewer reads it (see [`stored_text`]).
pub fn kept_text(kept: KeptText<'_>) -> Cow<'_, str> {
    match kept {
        KeptText::Whole(text) => text,
        KeptText::Cut(CutText {
            size,
            sha256,
            head,
            tail,
            ..
        }) => {
            let omitted = size.saturating_sub((head.len() + tail.len()) as u64);
            let sha256 = if sha256.is_empty() { "?" } else { &sha256 };
            Cow::Owned(format!(
                "{head}\n… [{omitted} bytes omitted, sha256 {sha256}] …\n{tail}"
            ))
        }
    }
}

/// The first line of `text`, and whether anything follows it.
pub fn first_line(text: &str) -> (&str, bool) {
    let trimmed = text.trim_start_matches(['\n', '\r']);
    match trimmed.split_once('\n') {
        Some((line, rest)) => (
            line.strip_suffix('\r').unwrap_or(line),
            !rest.trim().is_empty(),
        ),
        None => (trimmed, false),
    }
}

/// Characters that could make a terminal lie about what a record says: control
/// characters (escape sequences, carriage returns, …) and bidirectional overrides.
fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` made safe for a terminal (deceptive characters escaped, `\u{1b}`) and at most
/// `max` characters long (cut with `…`). Only for display: stored values are never
/// changed.
pub fn for_terminal(text: &str, max: usize) -> String {
    let pieces: Vec<Cow<'_, str>> = text
        .char_indices()
        .map(|(at, c)| {
            if is_deceptive(c) {
                Cow::Owned(c.escape_default().to_string())
            } else {
                Cow::Borrowed(&text[at..at + c.len_utf8()])
            }
        })
        .collect();
    let length = |piece: &Cow<'_, str>| piece.chars().count();
    if pieces.iter().map(length).sum::<usize>() <= max {
        return pieces.concat();
    }
    let mut shown = String::new();
    let mut count = 0;
    for piece in &pieces {
        if count + length(piece) >= max {
            break;
        }
        shown.push_str(piece);
        count += length(piece);
    }
    shown.push('…');
    shown
}

/// Like [`for_terminal`], but a long text keeps its end (`…` then the last
/// characters): for paths, whose end says the most.
pub fn for_terminal_keep_end(text: &str, max: usize) -> String {
    let shown = for_terminal(text, usize::MAX);
    let length = shown.chars().count();
    if length <= max {
        return shown;
    }
    let kept: String = shown.chars().skip(length + 1 - max.max(1)).collect();
    format!("…{kept}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn truncated_text_comes_back_with_what_is_missing() {
        let kept = json!({"truncated": true, "size": 20, "sha256": "ab", "head": "01234", "tail": "fghij"});
        assert_eq!(
            stored_text(&kept).as_deref(),
            Some("01234\n… [10 bytes omitted, sha256 ab] …\nfghij")
        );
        assert_eq!(stored_text(&json!("plain")).as_deref(), Some("plain"));
        assert_eq!(stored_text(&json!({"a": 1})), None);
    }

    #[test]
    fn first_line_says_whether_more_follows() {
        assert_eq!(first_line("a\nb"), ("a", true));
        assert_eq!(first_line("a\n"), ("a", false));
        assert_eq!(first_line("\n\nx\r\ny"), ("x", true));
        assert_eq!(first_line(""), ("", false));
    }

    #[test]
    fn terminal_text_is_escaped_and_shortened() {
        assert_eq!(for_terminal("ok", 10), "ok");
        assert_eq!(for_terminal("\u{1b}[2Jgone", 40), "\\u{1b}[2Jgone");
        assert_eq!(for_terminal("a\rb\tc", 40), "a\\rb\\tc");
        assert_eq!(for_terminal("evil\u{202e}txt", 40), "evil\\u{202e}txt");
        assert_eq!(for_terminal("abcdefghij", 5), "abcd…");
        assert_eq!(for_terminal("abcde", 5), "abcde");
        assert_eq!(for_terminal("日本語テキスト", 4), "日本語…");
        assert_eq!(for_terminal("abc\u{1b}", 6), "abc…");
        assert_eq!(
            for_terminal_keep_end("/home/u/notebook.ipynb", 12),
            "…ebook.ipynb"
        );
        assert_eq!(for_terminal_keep_end("a.ipynb", 12), "a.ipynb");
    }

    #[test]
    fn times_are_shown_in_utc_to_the_millisecond() {
        let time = parse_rfc3339("2024-05-01T14:00:00.123456+02:00").expect("valid");
        assert_eq!(display_time(time), "2024-05-01 12:00:00.123");
        let record = json!({"@timestamp": "yesterday"});
        assert_eq!(display_timestamp(&record), "yesterday");
    }
}
