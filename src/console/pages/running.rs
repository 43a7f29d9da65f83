//! Sessions running now (`P/running`): no end recorded and their proxy alive (the
//! index's liveness check, redone at every catch-up). The page works without
//! JavaScript (it reloads itself every 10 s through a `<noscript>` meta refresh);
//! `static/running.js`, same origin, replaces the table with `P/running/fragment` every
//! 5 s.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::sessions::sessions_table;
use super::{Nav, query_failed, record_view, shell};
use crate::console::index::{SessionPage, SessionQuery};
use crate::console::server::{Console, SignedIn};
use crate::console::trail::Viewed;

const MAX_RUNNING: usize = 500;

async fn running_sessions(console: &Console, signed: &SignedIn) -> Result<SessionPage, Response> {
    let visible = signed.visible.clone();
    console
        .index
        .query(move |index| {
            index.sessions(&SessionQuery {
                running: true,
                limit: MAX_RUNNING,
                visible,
                ..SessionQuery::default()
            })
        })
        .await
        .map_err(query_failed)
}

fn fragment_markup(console: &Console, page: &SessionPage) -> Markup {
    html! {
        div #running-sessions data-count=(page.sessions.len()) {
            p class="summary" { (page.sessions.len()) " session(s) running now." }
            (sessions_table(console, page, true))
        }
    }
}

/// `P/running`.
pub async fn running(State(console): State<Console>, signed: SignedIn) -> Response {
    if let Err(response) = record_view(&console, &signed, Viewed::Running).await {
        return response;
    }
    let page = match running_sessions(&console, &signed).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let body = html! {
        h1 { "Running now" }
        p class="dim" { "Updates every few seconds. " a href=(console.url("running")) { "Reload" } }
        // Without JavaScript the page reloads itself instead.
        noscript { meta http-equiv="refresh" content="10"; }
        div #running data-fragment=(console.url("running/fragment")) { (fragment_markup(&console, &page)) }
        script src=(console.url("static/running.js")) defer {}
    };
    shell(&console, &signed, Nav::Running, "Running now", body)
}

/// `P/running/fragment`: the table alone, for the script. Not a view of its own on the
/// record (the page that polls it is).
pub async fn fragment(State(console): State<Console>, signed: SignedIn) -> Response {
    match running_sessions(&console, &signed).await {
        Ok(page) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            fragment_markup(&console, &page).into_string(),
        )
            .into_response(),
        Err(response) => response,
    }
}
