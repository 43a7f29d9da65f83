//! Which records a query selects: `--user`, `--session`, `--kernel`, `--since`,
//! `--until`, `--action` and `--grep`, all of which must match.
//!
//! - `--user U`: `user.name` or `user.id` (the identity the collector verified, never the
//!   `claimed_username` of a message header) equals U.
//! - `--session S`, `--kernel K`: `jupyter.session_id` / `jupyter.kernel_id` starts with
//!   S / K (the first 8 characters the tables show are enough). The collector's own
//!   records have neither and never match.
//! - `--since T`, `--until T`: `@timestamp` (the collector's clock) is at or after / at or
//!   before T. T is RFC 3339 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00+02:00`) or a
//!   date (`2024-05-01`, UTC): `--since` a date means from its first instant, `--until`
//!   a date up to its last, so `--since D --until D` is the whole day D.
//! - `--action A` (repeatable): `event.action` is one of them.
//! - `--grep REGEX`: the regular expression (Rust `regex` syntax) matches somewhere in the
//!   stored line, that is the record's compact JSON: a newline in code is `\n` there,
//!   quotes are `\"`, non-ASCII text is as it is.

use regex::Regex;
use serde_json::Value;
use time::{Date, Duration, Month, OffsetDateTime};

use super::fields;

/// A query over records.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub session: Option<String>,
    pub kernel: Option<String>,
    /// Inclusive.
    pub since: Option<OffsetDateTime>,
    /// Inclusive.
    pub until: Option<OffsetDateTime>,
    /// Empty: any action.
    pub actions: Vec<String>,
    pub grep: Option<Regex>,
}

impl Filter {
    /// Whether the record (`raw` is its stored line, `value` the parsed line) matches.
    pub fn matches(&self, raw: &str, value: &Value) -> bool {
        if let Some(user) = &self.user {
            let name = fields::str_at(value, &["user", "name"]);
            let id = fields::str_at(value, &["user", "id"]);
            if name != Some(user.as_str()) && id != Some(user.as_str()) {
                return false;
            }
        }
        let prefix_of = |key: &str, prefix: &Option<String>| match prefix {
            Some(prefix) => fields::jupyter(value, key).is_some_and(|id| id.starts_with(prefix)),
            None => true,
        };
        if !prefix_of("session_id", &self.session) || !prefix_of("kernel_id", &self.kernel) {
            return false;
        }
        if !self.actions.is_empty() && !self.actions.iter().any(|a| a == fields::action(value)) {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(time) = fields::timestamp(value) else {
                return false;
            };
            if self.since.is_some_and(|since| time < since)
                || self.until.is_some_and(|until| time > until)
            {
                return false;
            }
        }
        self.grep.as_ref().is_none_or(|grep| grep.is_match(raw))
    }
}

const TIME_FORMS: &str = "expected RFC 3339 (2024-05-01T12:00:00Z) or a date (2024-05-01)";

/// `--since`: an RFC 3339 time, or the first instant of a date (UTC).
pub fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    if let Some(time) = fields::parse_rfc3339(text) {
        return Ok(time);
    }
    Ok(parse_date(text)?.midnight().assume_utc())
}

/// `--until`: an RFC 3339 time, or the last instant of a date (UTC).
pub fn parse_until(text: &str) -> Result<OffsetDateTime, String> {
    if let Some(time) = fields::parse_rfc3339(text) {
        return Ok(time);
    }
    let start = parse_date(text)?.midnight().assume_utc();
    Ok(start + Duration::days(1) - Duration::nanoseconds(1))
}

/// `YYYY-MM-DD`.
fn parse_date(text: &str) -> Result<Date, String> {
    let invalid = || format!("{text:?}: {TIME_FORMS}");
    let mut parts = text.split('-');
    let (Some(year), Some(month), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return Err(invalid());
    }
    let number = |part: &str| part.parse::<u16>().map_err(|_| invalid());
    let year = i32::from(number(year)?);
    let month = u8::try_from(number(month)?)
        .ok()
        .and_then(|month| Month::try_from(month).ok())
        .ok_or_else(invalid)?;
    let day = u8::try_from(number(day)?).map_err(|_| invalid())?;
    Date::from_calendar_date(year, month, day).map_err(|error| format!("{text:?}: {error}"))
}

/// `--grep`: a regular expression.
pub fn parse_regex(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> (String, Value) {
        let value = json!({
            "@timestamp": "2024-05-01T12:00:00.5Z",
            "event": {"action": "execute_request", "sequence": 7},
            "user": {"id": "1000", "name": "alice"},
            "jupyter": {"session_id": "abcdef12-3456", "kernel_id": "k-99", "code": "import os\nos.getcwd()", "claimed_username": "root"}
        });
        (value.to_string(), value)
    }

    fn matches(filter: Filter) -> bool {
        let (raw, value) = record();
        filter.matches(&raw, &value)
    }

    #[test]
    fn no_filter_matches_everything() {
        assert!(matches(Filter::default()));
    }

    #[test]
    fn user_is_the_verified_name_or_id_never_the_claim() {
        let user = |u: &str| Filter {
            user: Some(u.into()),
            ..Filter::default()
        };
        assert!(matches(user("alice")));
        assert!(matches(user("1000")));
        assert!(!matches(user("root")));
        assert!(!matches(user("ali")));
    }

    #[test]
    fn session_and_kernel_match_by_prefix() {
        let filter = |session: &str, kernel: &str| Filter {
            session: Some(session.into()),
            kernel: Some(kernel.into()),
            ..Filter::default()
        };
        assert!(matches(filter("abcdef12", "k-")));
        assert!(matches(filter("abcdef12-3456", "k-99")));
        assert!(!matches(filter("bcdef", "k-")));
        assert!(!matches(filter("abc", "k-98")));
        let collector_record = json!({"event": {"action": "collector_start"}, "collector": {}});
        let filter = filter("", "");
        assert!(!filter.matches(&collector_record.to_string(), &collector_record));
    }

    #[test]
    fn actions_may_repeat() {
        let actions = |list: &[&str]| Filter {
            actions: list.iter().map(|a| a.to_string()).collect(),
            ..Filter::default()
        };
        assert!(matches(actions(&["stream", "execute_request"])));
        assert!(!matches(actions(&["stream", "error"])));
    }

    #[test]
    fn time_bounds_are_inclusive_and_dates_cover_the_day() {
        let window = |since: &str, until: &str| Filter {
            since: Some(parse_since(since).expect("since")),
            until: Some(parse_until(until).expect("until")),
            ..Filter::default()
        };
        assert!(matches(window("2024-05-01", "2024-05-01")));
        assert!(matches(window(
            "2024-05-01T12:00:00.5Z",
            "2024-05-01T12:00:00.5Z"
        )));
        assert!(matches(window(
            "2024-05-01T13:00:00+02:00",
            "2024-05-01T14:30:00+02:00"
        )));
        assert!(!matches(window("2024-05-02", "2024-05-03")));
        assert!(!matches(window("2024-04-01", "2024-04-30")));
        assert!(!matches(window("2024-05-01T12:00:01Z", "2024-05-02")));
        let (_, mut untimed) = record();
        untimed["@timestamp"] = json!("soon");
        assert!(!window("2000-01-01", "2100-01-01").matches("", &untimed));
    }

    #[test]
    fn bad_times_say_what_is_expected() {
        for bad in [
            "2024-5-1",
            "yesterday",
            "2024-02-30",
            "2024-13-01",
            "2024-05-01T12:00",
        ] {
            let error = parse_since(bad).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
        assert_eq!(
            parse_until("2024-02-29").expect("leap day").to_string(),
            "2024-02-29 23:59:59.999999999 +00:00:00"
        );
    }

    #[test]
    fn grep_searches_the_stored_line() {
        let grep = |pattern: &str| Filter {
            grep: Some(parse_regex(pattern).expect("regex")),
            ..Filter::default()
        };
        assert!(matches(grep(r"import os\\nos\.getcwd")));
        assert!(matches(grep("claimed_username\":\"root")));
        assert!(!matches(grep("^import")));
        assert!(parse_regex("(").is_err());
    }
}
