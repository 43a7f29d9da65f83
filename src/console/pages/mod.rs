//! The console's pages, server-rendered with maud: each module one view, each view put
//! on the record ([`ReviewTrail::viewed`]) before it is rendered; if that fails the
//! answer is a 503 saying so. This module holds what they share: the page shell (top
//! bar, navigation, the "indexing" banner), the 503/500 answers, the static files and
//! small formatters.
//!
//! - [`sessions`]: the sessions list (filters, paging) and a user's timeline.
//! - [`session`]: one session as it ran, its HTML outputs in a sandbox, review marks.
//! - [`search`]: code search.
//! - [`health`]: the store's health.
//! - [`running`]: sessions running now, updating live.

pub mod download;
pub mod health;
pub mod running;
pub mod search;
pub mod session;
pub mod sessions;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::index::SessionRow;
use super::pool::QueryError;
use super::server::{Console, SignedIn, error_page};
use super::trail::Viewed;

const STYLESHEET: &str = include_str!("../static/console.css");
const RUNNING_SCRIPT: &str = include_str!("../static/running.js");

/// Which part of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Sessions,
    Running,
    Search,
    Health,
}

/// Puts the view on the record; `Err` is the 503 page to answer instead.
pub async fn record_view(
    console: &Console,
    signed: &SignedIn,
    viewed: Viewed,
) -> Result<(), Response> {
    console
        .trail
        .viewed(&signed.reviewer, viewed)
        .await
        .map_err(|error| {
            tracing::warn!(%error, reviewer = %signed.reviewer.name, "a view could not be recorded: not shown");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The audit log is unavailable, so this view is not shown: every view of the \
                 console is recorded before it is shown. Try again in a moment; if it lasts, \
                 the collector is down.",
            )
        })
}

/// The answer when the index could not be read.
pub fn query_failed(error: QueryError) -> Response {
    tracing::warn!(%error, "a page's query failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The console's index could not be read; see the console's log.",
    )
}

/// A full page: top bar, navigation, the indexing banner, then `body`.
pub fn shell(
    console: &Console,
    signed: &SignedIn,
    nav: Nav,
    title: &str,
    body: Markup,
) -> Response {
    let progress = &console.index.progress;
    let indexing = !progress.ready.load(Ordering::Relaxed);
    let stored = progress.stored.load(Ordering::Relaxed);
    let indexed = progress.indexed.load(Ordering::Relaxed);
    let link = |target: Nav, href: String, label: &str| {
        html! { a href=(href) class={ "nav" @if nav == target { " current" } } { (label) } }
    };
    let document = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jupyter-audit" }
                link rel="stylesheet" href=(console.url("static/console.css"));
            }
            body {
                header #topbar {
                    a #brand href=(console.url("")) { "jupyter-audit" }
                    nav {
                        (link(Nav::Sessions, console.url(""), "Sessions"))
                        (link(Nav::Running, console.url("running"), "Running now"))
                        (link(Nav::Search, console.url("search"), "Code search"))
                        (link(Nav::Health, console.url("health"), "Health"))
                    }
                    form #quick-search method="get" action=(console.url("search")) {
                        input type="search" name="q" placeholder="Search code…" aria-label="Search code";
                    }
                    span #reviewer {
                        "Signed in as " strong #user { (signed.reviewer.name) }
                        @if signed.reviewer.outputs_visible {
                            span class="role" title="custom:jupyter-audit:read-outputs" { "code + outputs" }
                        } @else {
                            span class="role limited" title="custom:jupyter-audit:read" { "code only" }
                        }
                        " " a #logout href=(console.url("logout")) { "Log out" }
                    }
                }
                @if indexing {
                    p #indexing class="banner" {
                        "Indexing the store: " (indexed) " of " (stored) " records so far. "
                        "Lists may be incomplete until it is done."
                    }
                }
                main #content { (body) }
            }
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        document.into_string(),
    )
        .into_response()
}

/// `P/static/<file>`: the stylesheet and the running page's script.
pub async fn static_file(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (STYLESHEET, "text/css; charset=utf-8"),
        "running.js" => (RUNNING_SCRIPT, "text/javascript; charset=utf-8"),
        _ => return error_page(StatusCode::NOT_FOUND, "No such file."),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// A stored RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC as stored).
pub fn short_time(time: Option<&str>) -> String {
    match time {
        Some(text) if text.len() >= 19 => format!("{} {}", &text[..10], &text[11..19]),
        Some(text) => text.to_owned(),
        None => "—".to_owned(),
    }
}

/// A duration in milliseconds as people read it.
pub fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        format!(
            "{:.0} min {:.0} s",
            (ms / 60_000.0).floor(),
            (ms % 60_000.0) / 1000.0
        )
    } else {
        format!("{:.1} h", ms / 3_600_000.0)
    }
}

/// The state of a session as a coloured label.
pub fn state_badge(session: &SessionRow) -> Markup {
    let state = session.state.as_str();
    let class = state.replace(' ', "-");
    html! {
        span class={ "badge state " (class) } title=[session.end_reason.as_deref()] { (state) }
    }
}

/// A session's review mark as a label.
pub fn mark_badge(mark: Option<&str>) -> Markup {
    html! {
        @match mark {
            Some(mark) => span class={ "badge mark " (mark) } { (mark) },
            None => span class="badge mark unmarked" { "unmarked" },
        }
    }
}
