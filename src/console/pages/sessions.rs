//! The sessions list at the prefix (filters: user, start time range, notebook, kernel,
//! with errors, refused, ended abnormally, review mark; keyset paging, newest first) and
//! one user's timeline (`P/user/<name>`, their sessions newest first, grouped by day).

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{Nav, mark_badge, query_failed, record_view, shell, short_time, state_badge};
use crate::console::index::{
    MarkFilter, SessionCursor, SessionPage, SessionQuery, SessionRow, Visibility,
};
use crate::console::server::{Console, SignedIn};
use crate::console::trail::Viewed;
use crate::review::filter::{parse_since, parse_until};

/// Rows per page.
const PAGE_ROWS: usize = 50;

/// The list's filters as the query string gives them (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub notebook: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub errors: Option<String>,
    #[serde(default)]
    pub refused: Option<String>,
    #[serde(default)]
    pub abnormal: Option<String>,
    /// reviewed | flagged | unmarked
    #[serde(default)]
    pub mark: String,
    /// The cursor of the previous page: `<start ms>.<id>`.
    #[serde(default)]
    pub after: String,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

impl Filters {
    /// The index query, and what could not be understood.
    fn query(&self) -> (SessionQuery, Vec<String>) {
        let mut problems = Vec::new();
        let mut time = |text: &str, parse: fn(&str) -> Result<time::OffsetDateTime, String>| {
            some(text).and_then(|text| match parse(&text) {
                Ok(time) => Some(time),
                Err(error) => {
                    problems.push(error);
                    None
                }
            })
        };
        let since = time(&self.since, parse_since);
        let until = time(&self.until, parse_until);
        let after = self.after.split_once('.').and_then(|(start, id)| {
            Some(SessionCursor {
                start_ms: start.parse().ok()?,
                id: id.parse().ok()?,
            })
        });
        let mark = match self.mark.as_str() {
            "reviewed" => Some(MarkFilter::Reviewed),
            "flagged" => Some(MarkFilter::Flagged),
            "unmarked" => Some(MarkFilter::Unmarked),
            _ => None,
        };
        let query = SessionQuery {
            user: some(&self.user),
            since,
            until,
            notebook: some(&self.notebook),
            kernel: some(&self.kernel),
            with_errors: self.errors.is_some(),
            with_refused: self.refused.is_some(),
            ended_abnormally: self.abnormal.is_some(),
            running: false,
            mark,
            after,
            limit: PAGE_ROWS,
            visible: Visibility::All,
        };
        (query, problems)
    }

    /// The query string of these filters (without the cursor), for links and the record.
    fn to_query_string(&self) -> String {
        let mut parts = Vec::new();
        for (name, value) in [
            ("user", &self.user),
            ("since", &self.since),
            ("until", &self.until),
            ("notebook", &self.notebook),
            ("kernel", &self.kernel),
            ("mark", &self.mark),
        ] {
            if let Some(value) = some(value) {
                parts.push(format!("{name}={}", encode(&value)));
            }
        }
        for (name, on) in [
            ("errors", self.errors.is_some()),
            ("refused", self.refused.is_some()),
            ("abnormal", self.abnormal.is_some()),
        ] {
            if on {
                parts.push(format!("{name}=1"));
            }
        }
        parts.join("&")
    }
}

fn next_link(base: &str, filters: &str, next: Option<SessionCursor>) -> Markup {
    html! {
        @if let Some(next) = next {
            p class="paging" {
                a #next-page rel="next" href={ (base) "?" (filters) @if !filters.is_empty() { "&" } "after=" (next.start_ms) "." (next.id) } { "Older sessions →" }
            }
        }
    }
}

/// `P`: the sessions list.
pub async fn list(
    State(console): State<Console>,
    signed: SignedIn,
    Query(filters): Query<Filters>,
) -> Response {
    let query_string = filters.to_query_string();
    if let Err(response) = record_view(
        &console,
        &signed,
        Viewed::Sessions {
            filters: query_string.clone(),
        },
    )
    .await
    {
        return response;
    }
    let (mut query, problems) = filters.query();
    query.visible = signed.visible.clone();
    let page = match console
        .index
        .query(move |index| index.sessions(&query))
        .await
    {
        Ok(page) => page,
        Err(error) => return query_failed(error),
    };
    let body = html! {
        form #filters class="filter-bar" method="get" action=(console.url("")) {
            label { "User " input type="text" name="user" value=(filters.user) size="10"; }
            label { "From " input type="text" name="since" value=(filters.since) placeholder="2026-11-30" size="12"; }
            label { "Until " input type="text" name="until" value=(filters.until) placeholder="2026-12-01" size="12"; }
            label { "Notebook " input type="text" name="notebook" value=(filters.notebook) size="14"; }
            label { "Kernel " input type="text" name="kernel" value=(filters.kernel) size="8"; }
            label class="check" { input type="checkbox" name="errors" value="1" checked[filters.errors.is_some()]; " errors" }
            label class="check" { input type="checkbox" name="refused" value="1" checked[filters.refused.is_some()]; " refused" }
            label class="check" { input type="checkbox" name="abnormal" value="1" checked[filters.abnormal.is_some()]; " ended abnormally" }
            label { "Review "
                select name="mark" {
                    option value="" selected[filters.mark.is_empty()] { "any" }
                    @for mark in ["unmarked", "reviewed", "flagged"] {
                        option value=(mark) selected[filters.mark == mark] { (mark) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a class="reset" href=(console.url("")) { "Reset" }
        }
        @for problem in &problems { p class="problem" { (problem) } }
        (sessions_table(&console, &page, true))
        (next_link(&console.url(""), &query_string, page.next))
    };
    shell(&console, &signed, Nav::Sessions, "Sessions", body)
}

/// The table of sessions (`id="sessions"`, one `tr.session` with `data-session-id` each).
pub fn sessions_table(console: &Console, page: &SessionPage, with_user: bool) -> Markup {
    html! {
        @if page.sessions.is_empty() {
            p #no-sessions class="empty" { "No sessions match." }
        } @else {
            table #sessions class="grid" {
                thead { tr {
                    th { "Started (UTC)" }
                    @if with_user { th { "User" } }
                    th { "Notebook" } th { "Kernel" } th class="num" { "Cells" }
                    th class="num" { "Errors" } th class="num" { "Refused" } th { "State" } th { "Review" }
                } }
                tbody {
                    @for session in &page.sessions { (session_row(console, session, with_user)) }
                }
            }
        }
    }
}

fn session_row(console: &Console, session: &SessionRow, with_user: bool) -> Markup {
    let user = session.user.as_deref().unwrap_or("?");
    html! {
        tr class={ "session" @if session.errors > 0 { " has-errors" } @if session.refused > 0 { " has-refused" } }
            data-session-id=(session.session_id) data-row=(session.id) {
            td { a class="session-link" href=(console.url(&format!("session/{}", session.id))) { (short_time(session.start.as_deref())) } }
            @if with_user {
                td { a class="user-link" href=(console.url(&format!("user/{}", encode(user)))) { (user) } }
            }
            td class="notebook" { (session.notebook.as_deref().unwrap_or("—")) }
            td { (session.kernel_name.as_deref().unwrap_or("—")) }
            td class="num" { (session.cells) }
            td class={ "num" @if session.errors > 0 { " error" } } { (session.errors) }
            td class={ "num" @if session.refused > 0 { " refused" } } { (session.refused) }
            td { (state_badge(session)) }
            td { (mark_badge(session.mark.as_deref())) }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct TimelineQuery {
    #[serde(default)]
    after: String,
}

/// `P/user/<name>`: one user's sessions, newest first, by day.
pub async fn timeline(
    State(console): State<Console>,
    signed: SignedIn,
    Path(name): Path<String>,
    Query(paging): Query<TimelineQuery>,
) -> Response {
    if let Err(response) =
        record_view(&console, &signed, Viewed::Timeline { user: name.clone() }).await
    {
        return response;
    }
    let filters = Filters {
        user: name.clone(),
        after: paging.after,
        ..Filters::default()
    };
    let (mut query, _) = filters.query();
    query.visible = signed.visible.clone();
    let page = match console
        .index
        .query(move |index| index.sessions(&query))
        .await
    {
        Ok(page) => page,
        Err(error) => return query_failed(error),
    };
    let cells: u64 = page.sessions.iter().map(|session| session.cells).sum();
    let errors: u64 = page.sessions.iter().map(|session| session.errors).sum();
    let mut days: Vec<(String, Vec<&SessionRow>)> = Vec::new();
    for session in &page.sessions {
        let day = session
            .start
            .as_deref()
            .map_or("unknown day", |start| start.get(..10).unwrap_or(start))
            .to_owned();
        match days.last_mut() {
            Some((last, rows)) if *last == day => rows.push(session),
            _ => days.push((day, vec![session])),
        }
    }
    let body = html! {
        h1 { "Timeline of " span #timeline-user { (name) } }
        p class="summary" {
            (page.sessions.len()) " sessions on this page, " (cells) " cells, " (errors) " with errors. "
            a href={ (console.url("")) "?user=" (encode(&name)) } { "Filter the sessions list" }
        }
        ol #timeline class="timeline" {
            @for (day, sessions) in &days {
                li class="day" {
                    h2 { (day) }
                    (sessions_table(&console, &SessionPage { sessions: sessions.iter().map(|s| (*s).clone()).collect(), next: None }, false))
                }
            }
        }
        @if page.sessions.is_empty() { p class="empty" { "No sessions of this user." } }
        (next_link(&console.url(&format!("user/{}", encode(&name))), "", page.next))
    };
    shell(
        &console,
        &signed,
        Nav::Sessions,
        &format!("Timeline of {name}"),
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_the_index_query_and_back() {
        let filters = Filters {
            user: " alice ".into(),
            notebook: "a&b".into(),
            errors: Some("1".into()),
            mark: "flagged".into(),
            after: "1700000000000.42".into(),
            since: "not a time".into(),
            ..Filters::default()
        };
        let (query, problems) = filters.query();
        assert_eq!(query.user.as_deref(), Some("alice"));
        assert!(query.with_errors && !query.with_refused);
        assert_eq!(query.mark, Some(MarkFilter::Flagged));
        assert_eq!(
            query.after,
            Some(SessionCursor {
                start_ms: 1_700_000_000_000,
                id: 42
            })
        );
        assert_eq!(problems.len(), 1, "a bad time is said, not ignored");
        assert_eq!(
            filters.to_query_string(),
            "user=alice&since=not%20a%20time&notebook=a%26b&mark=flagged&errors=1"
        );
    }
}
