//! One session as it ran (`P/session/<row id>`): its facts (who, where, kernel,
//! notebook, start, end and how it ended), review marks and the form to add one, then
//! its cells in record order with execution count, code, duration, status, refusals,
//! gaps between cells and interrupts, and — for reviewers holding
//! `custom:jupyter-audit:read-outputs` only — their outputs, read from the store.
//!
//! `P/session/<id>/output/<sequence>` answers an HTML output inside its sandbox (own CSP:
//! `sandbox`, no scripts); `P/session/<id>/mark` takes the mark form (POST, CSRF token).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::{Nav, duration, mark_badge, query_failed, record_view, shell, short_time, state_badge};
use crate::console::auth::SCOPE_READ_OUTPUTS;
use crate::console::index::{CODE_SHOWN_CHARS, CellRow, MarkRow, SessionRow, StoreEvent};
use crate::console::outputs::{self, SessionOutputs};
use crate::console::render::{code, output};
use crate::console::server::{Console, SignedIn, error_page, refuse_view};
use crate::console::trail::{Mark, Viewed};
use crate::review::fields::parse_rfc3339;
use crate::review::sessions::SessionKey;

/// A pause between two cells longer than this is shown as a gap.
const GAP_SECONDS: i64 = 10 * 60;
/// The longest note a mark takes.
const MAX_NOTE: usize = 2_000;
/// Cells on one page of a session: a session of many thousands of cells is read and
/// shown a page at a time.
const CELLS_PER_PAGE: u32 = 500;

/// Where a page of a session starts: `from` is the first record of its first cell.
#[derive(Debug, Default, Deserialize)]
pub struct SessionPageQuery {
    #[serde(default)]
    from: u64,
}

fn key_of(session: &SessionRow) -> SessionKey {
    SessionKey {
        session_id: session.session_id.clone(),
        user_id: session.user_id.clone(),
    }
}

struct Loaded {
    session: SessionRow,
    cells: Vec<CellRow>,
    /// Where the next page of cells starts, if there is one.
    next_from: Option<u64>,
    /// Whether cells come before this page.
    earlier: bool,
    marks: Vec<MarkRow>,
    /// Interrupts, signals, gaps, … recorded in the session.
    events: Vec<StoreEvent>,
}

async fn load(console: &Console, id: i64, from: u64) -> Result<Option<Loaded>, Response> {
    console
        .index
        .query(move |index| {
            let Some(session) = index.session(id)? else {
                return Ok(None);
            };
            let mut cells = index.cells_after(id, from.saturating_sub(1), CELLS_PER_PAGE + 1)?;
            let next_from = (cells.len() > CELLS_PER_PAGE as usize)
                .then(|| cells.pop().map(|next| next.first_sequence))
                .flatten();
            let earlier = index
                .cells_after(id, 0, 1)?
                .first()
                .is_some_and(|first| first.first_sequence < from);
            let marks = index.marks(&session.session_id)?;
            let events =
                index.session_events(&session.store, &session.session_id, &session.user_id)?;
            Ok(Some(Loaded {
                session,
                cells,
                next_from,
                earlier,
                marks,
                events,
            }))
        })
        .await
        .map_err(query_failed)
}

fn no_session() -> Response {
    error_page(StatusCode::NOT_FOUND, "No such session.")
}

/// `P/session/<id>`.
pub async fn show(
    State(console): State<Console>,
    signed: SignedIn,
    Path(id): Path<i64>,
    Query(page): Query<SessionPageQuery>,
) -> Response {
    let loaded = match load(&console, id, page.from).await {
        Ok(Some(loaded)) if signed.may_see(&loaded.session) => loaded,
        Ok(_) => return no_session(),
        Err(response) => return response,
    };
    let outputs_visible = signed.may_see_outputs(&loaded.session);
    if let Err(response) = record_view(
        &console,
        &signed,
        Viewed::Session {
            session_id: loaded.session.session_id.clone(),
            outputs: outputs_visible,
        },
    )
    .await
    {
        return response;
    }
    let outputs = if outputs_visible {
        let source = console.source.clone();
        let store = loaded.session.store.clone();
        let key = key_of(&loaded.session);
        let first = loaded
            .cells
            .iter()
            .map(|cell| cell.first_sequence)
            .min()
            .unwrap_or(loaded.session.first_sequence);
        // A page's outputs end where the next page's first cell starts.
        let last = loaded
            .next_from
            .map_or(loaded.session.last_sequence, |next| next.saturating_sub(1));
        let read =
            tokio::task::spawn_blocking(move || outputs::read(&source, &store, &key, first, last))
                .await;
        match read {
            Ok(Ok(outputs)) => Some(Ok(outputs)),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read a session's outputs from the store");
                Some(Err(error.to_string()))
            }
            Err(error) => Some(Err(error.to_string())),
        }
    } else {
        None
    };
    let csrf = console.csrf_token(&signed.session);
    let title = format!(
        "{} · {}",
        loaded.session.user.as_deref().unwrap_or("?"),
        loaded.session.notebook.as_deref().unwrap_or("session")
    );
    let body = render(&console, &loaded, outputs.as_ref(), &csrf);
    shell(&console, &signed, Nav::Sessions, &title, body)
}

fn render(
    console: &Console,
    loaded: &Loaded,
    outputs: Option<&Result<SessionOutputs, String>>,
    csrf: &str,
) -> Markup {
    let session = &loaded.session;
    let user = session.user.as_deref().unwrap_or("?");
    let frame_url =
        |sequence: u64| console.url(&format!("session/{}/output/{sequence}", session.id));
    html! {
        article #session data-session-id=(session.session_id) data-row=(session.id) {
            header class="session-head" {
                h1 {
                    a href=(console.url(&format!("user/{}", super::sessions::encode(user)))) { (user) }
                    " · " (session.notebook.as_deref().unwrap_or("(no notebook path)"))
                    " " (state_badge(session)) " " (mark_badge(session.mark.as_deref()))
                }
                dl class="facts" {
                    dt { "Session" } dd { code { (session.session_id) } }
                    dt { "Kernel" } dd { (session.kernel_name.as_deref().unwrap_or("—")) " " code class="dim" { (session.kernel_id.as_deref().unwrap_or("")) } }
                    dt { "Host" } dd { (session.host.as_deref().unwrap_or("—")) " (proxy pid " (session.proxy_pid.map_or("—".to_owned(), |pid| pid.to_string())) ")" }
                    dt { "OS uid" } dd { (session.user_id) " (" (session.verified_by.as_deref().unwrap_or("?")) ")" }
                    @if let Some(hub_user) = &session.hub_user { dt { "Hub user" } dd { (hub_user) } }
                    dt { "Started" } dd { (short_time(session.start.as_deref())) }
                    dt { "Ended" } dd #session-end {
                        (short_time(session.end.as_deref())) " — " (session.state.as_str())
                        @if let Some(reason) = &session.end_reason { ": " span class="end-reason" { (reason) } }
                    }
                    dt { "Counts" } dd { (session.cells) " cells, " (session.errors) " errors, " (session.refused) " refused, " (session.records) " records (" (session.first_sequence) "–" (session.last_sequence) ")" }
                }
                p class="actions" {
                    a #download href=(console.url(&format!("session/{}/download", session.id))) { "Download .ipynb with its proof" }
                }
            }
            (marks(console, session, &loaded.marks, csrf))
            @match outputs {
                None => p #outputs-hidden class="banner limited" {
                    "Outputs are hidden for your role: your Hub account holds custom:jupyter-audit:read but not custom:jupyter-audit:read-outputs."
                },
                Some(Err(error)) => p class="banner problem" { "The outputs could not be read from the store: " (error) },
                Some(Ok(_)) => {},
            }
            ol #cells class="cells" {
                @for (index, cell) in loaded.cells.iter().enumerate() {
                    @if let Some(gap) = gap_before(&loaded.cells, index) {
                        li class="gap" { "… " (gap) " without activity …" }
                    }
                    @for event in events_before(&loaded.events, &loaded.cells, index) {
                        (event_view(event))
                    }
                    (cell_view(cell, outputs.and_then(|o| o.as_ref().ok()), &frame_url))
                }
                @for event in events_before(&loaded.events, &loaded.cells, loaded.cells.len()) {
                    (event_view(event))
                }
            }
            @if loaded.cells.is_empty() { p class="empty" { "No cells ran in this session." } }
            @if loaded.earlier || loaded.next_from.is_some() {
                nav #cell-pages class="pager" {
                    @if loaded.earlier {
                        a #first-cells href=(console.url(&format!("session/{}", session.id))) { "← First cells" }
                    }
                    @if let Some(next) = loaded.next_from {
                        " "
                        a #next-cells href=(console.url(&format!("session/{}?from={next}", session.id))) { "Next " (CELLS_PER_PAGE) " cells →" }
                    }
                }
            }
            footer class="session-end" {
                @if session.end.is_some() {
                    "Session ended " (short_time(session.end.as_deref()))
                    @if let Some(reason) = &session.end_reason { ": " (reason) } @else { " normally." }
                } @else {
                    "No end recorded: " (session.state.as_str())
                    @if let Some(reason) = &session.end_reason { " (" (reason) ")" }
                }
            }
        }
    }
}

/// The session's events recorded after cell `index - 1` started and before cell `index`
/// (all of them after the last cell when `index` is past the end).
fn events_before<'a>(
    events: &'a [StoreEvent],
    cells: &[CellRow],
    index: usize,
) -> impl Iterator<Item = &'a StoreEvent> {
    let from = index
        .checked_sub(1)
        .and_then(|previous| cells.get(previous))
        .map_or(0, |cell| cell.first_sequence);
    let to = cells
        .get(index)
        .map_or(u64::MAX, |cell| cell.first_sequence);
    events
        .iter()
        .filter(move |event| event.sequence > from && event.sequence < to)
}

fn event_view(event: &StoreEvent) -> Markup {
    html! {
        li class={ "event " (event.action) } data-sequence=(event.sequence) {
            span class="badge event" { (event.action.replace('_', " ")) }
            " " (short_time(event.time.as_deref()))
            @if !event.summary.is_empty() { " — " (event.summary) }
        }
    }
}

/// The pause before cell `index`, when long enough to show.
fn gap_before(cells: &[CellRow], index: usize) -> Option<String> {
    let previous = cells.get(index.checked_sub(1)?)?;
    let before = parse_rfc3339(previous.requested_at.as_deref()?)?;
    let now = parse_rfc3339(cells.get(index)?.requested_at.as_deref()?)?;
    let seconds =
        (now - before).whole_seconds() - previous.duration_ms.map_or(0, |ms| (ms / 1000.0) as i64);
    (seconds > GAP_SECONDS).then(|| duration(seconds as f64 * 1000.0))
}

fn cell_view(
    cell: &CellRow,
    outputs: Option<&SessionOutputs>,
    frame_url: &dyn Fn(u64) -> String,
) -> Markup {
    let status = if cell.refused {
        "refused"
    } else if cell.failed {
        "error"
    } else {
        cell.status.as_deref().unwrap_or("no reply")
    };
    let class = status.replace(' ', "-");
    let interrupted = outputs
        .and_then(|outputs| outputs.by_request.get(&cell.msg_id))
        .is_some_and(|list| {
            list.iter().any(|output| {
                matches!(output, crate::console::outputs::Output::Error { ename, .. } if ename == "KeyboardInterrupt")
            })
        })
        || cell.status.as_deref() == Some("aborted");
    html! {
        li class={ "cell " (class) @if interrupted { " interrupted" } } id={ "cell-" (cell.id) } data-msg-id=(cell.msg_id) data-sequence=(cell.first_sequence) {
            div class="cell-head" {
                a class="prompt" href={ "#cell-" (cell.id) } {
                    "[" (cell.execution_count.map_or(" ".to_owned(), |n| n.to_string())) "]"
                }
                span class="time" { (short_time(cell.requested_at.as_deref())) }
                @if let Some(ms) = cell.duration_ms { span class="duration" { (duration(ms)) } }
                span class={ "badge status " (class) } { (status) }
                @if interrupted { span class="badge interrupted" { "interrupted" } }
            }
            @if cell.refused {
                p class="refusal" { "Refused: not run, because it could not be recorded first." }
            }
            pre class="code" { code { (PreEscaped(code::to_html(cell.code.as_deref().unwrap_or("")))) } }
            @if cell.code_chars > CODE_SHOWN_CHARS {
                p class="cut" {
                    "… " (cell.code_chars - CODE_SHOWN_CHARS) " more characters of this cell not shown (the .ipynb download holds it whole)."
                }
            }
            @if let Some(outputs) = outputs {
                @if let Some(list) = outputs.by_request.get(&cell.msg_id) {
                    div class="outputs" {
                        @for shown in list { (output::render(shown, frame_url)) }
                    }
                }
            }
        }
    }
}

fn marks(console: &Console, session: &SessionRow, marks: &[MarkRow], csrf: &str) -> Markup {
    html! {
        section #marks class="marks" {
            h2 { "Review" }
            @if marks.is_empty() { p class="empty" { "Not reviewed yet." } }
            ul {
                @for mark in marks {
                    li class={ "mark " (mark.mark) } {
                        (mark_badge(Some(&mark.mark))) " by " strong { (mark.reviewer) } " at " (short_time(mark.time.as_deref()))
                        @if let Some(note) = &mark.note { ": " span class="note" { (note) } }
                    }
                }
            }
            form #mark-form method="post" action=(console.url(&format!("session/{}/mark", session.id))) {
                input type="hidden" name="csrf" value=(csrf);
                label { "Note " input type="text" name="note" maxlength=(MAX_NOTE) size="50"; }
                button type="submit" name="mark" value="reviewed" { "Mark reviewed" }
                button type="submit" name="mark" value="flagged" class="flag" { "Flag" }
            }
        }
    }
}

/// `P/session/<id>/output/<sequence>`: an HTML output in its sandbox; 403 without the
/// outputs scope.
pub async fn output(
    State(console): State<Console>,
    signed: SignedIn,
    Path((id, sequence)): Path<(i64, u64)>,
) -> Response {
    let session = match console.index.query(move |index| index.session(id)).await {
        Ok(Some(session)) if signed.may_see(&session) => session,
        Ok(_) => return no_session(),
        Err(error) => return query_failed(error),
    };
    if !signed.may_see_outputs(&session) {
        let asked = Viewed::Output {
            session_id: session.session_id.clone(),
            sequence,
        };
        return refuse_view(&console, &signed.session, asked, SCOPE_READ_OUTPUTS).await;
    }
    if sequence < session.first_sequence || sequence > session.last_sequence {
        return error_page(StatusCode::NOT_FOUND, "No such output in this session.");
    }
    if let Err(response) = record_view(
        &console,
        &signed,
        Viewed::Output {
            session_id: session.session_id.clone(),
            sequence,
        },
    )
    .await
    {
        return response;
    }
    let source = console.source.clone();
    let store = session.store.clone();
    let key = key_of(&session);
    let read = tokio::task::spawn_blocking(move || {
        outputs::read_data_record(&source, &store, &key, sequence)
    })
    .await;
    let document = match read {
        Ok(Ok(Some(bundle))) => output::sandboxed_document(&bundle),
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read an output from the store");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The store could not be read.",
            );
        }
        Err(_) => None,
    };
    let Some(document) = document else {
        return error_page(StatusCode::NOT_FOUND, "No HTML output at this sequence.");
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, output::SANDBOX_CSP),
        ],
        document,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct MarkForm {
    csrf: String,
    mark: String,
    #[serde(default)]
    note: String,
}

/// `P/session/<id>/mark` (POST): puts the reviewer's mark on the record.
pub async fn mark(
    State(console): State<Console>,
    signed: SignedIn,
    Path(id): Path<i64>,
    Form(form): Form<MarkForm>,
) -> Response {
    if !console.csrf_matches(&signed.session, &form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "This form did not come from your console session (CSRF check). Reload the page and try again.",
        );
    }
    let mark = match form.mark.as_str() {
        "reviewed" => Mark::Reviewed,
        "flagged" => Mark::Flagged,
        _ => return error_page(StatusCode::BAD_REQUEST, "A mark is reviewed or flagged."),
    };
    let mut note = form.note.trim().to_owned();
    outputs::cut_text(&mut note, MAX_NOTE);
    let session = match console.index.query(move |index| index.session(id)).await {
        Ok(Some(session)) if signed.may_see(&session) => session,
        Ok(_) => return no_session(),
        Err(error) => return query_failed(error),
    };
    if let Err(error) = console
        .trail
        .mark(&signed.reviewer, &session.session_id, mark, &note)
        .await
    {
        tracing::warn!(%error, "a mark could not be recorded");
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The audit log is unavailable, so the mark was not recorded. Try again in a moment.",
        );
    }
    Redirect::to(&console.url(&format!("session/{id}#marks"))).into_response()
}
