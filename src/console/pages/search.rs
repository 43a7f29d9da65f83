//! Code search (`P/search?q=`): cells whose code contains the text (case-insensitive
//! substring, three characters at least), newest first, 50 a page; each hit links to its
//! cell in its session (`#cell-<id>`).

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{PreEscaped, html};
use serde::Deserialize;

use super::sessions::encode;
use super::{Nav, query_failed, record_view, shell, short_time};
use crate::console::index::{IndexError, MIN_SEARCH_CHARS};
use crate::console::pool::QueryError;
use crate::console::render::ansi::escape_into;
use crate::console::server::{Console, SignedIn};
use crate::console::trail::Viewed;

const PAGE_HITS: usize = 50;
/// Lines of a hit's code shown around the first match.
const CONTEXT_LINES: usize = 2;

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
    /// The id of the previous page's last hit.
    before: Option<i64>,
}

/// The lines of `code` around the first (case-insensitive) match of `text`, escaped,
/// with the match in `<mark>`.
fn excerpt(code: &str, text: &str) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let needle = text.to_lowercase();
    let found = lines
        .iter()
        .position(|line| line.to_lowercase().contains(&needle))
        .unwrap_or(0);
    let from = found.saturating_sub(CONTEXT_LINES);
    let to = (found + CONTEXT_LINES + 1).min(lines.len());
    let mut out = String::new();
    for (number, line) in lines[from..to].iter().enumerate() {
        if number > 0 {
            out.push('\n');
        }
        let lower = line.to_lowercase();
        // Marks only when lowercasing kept the byte positions (ASCII, mostly).
        match lower.find(&needle).filter(|_| lower.len() == line.len()) {
            Some(at) if line.is_char_boundary(at) && line.is_char_boundary(at + needle.len()) => {
                escape_into(&mut out, &line[..at]);
                out.push_str("<mark>");
                escape_into(&mut out, &line[at..at + needle.len()]);
                out.push_str("</mark>");
                escape_into(&mut out, &line[at + needle.len()..]);
            }
            _ => escape_into(&mut out, line),
        }
    }
    out
}

/// `P/search?q=`.
pub async fn search(
    State(console): State<Console>,
    signed: SignedIn,
    Query(query): Query<SearchQuery>,
) -> Response {
    let text = query.q.trim().to_owned();
    if !text.is_empty()
        && let Err(response) = record_view(
            &console,
            &signed,
            Viewed::Search {
                query: text.clone(),
            },
        )
        .await
    {
        return response;
    }
    let hits = if text.chars().count() >= MIN_SEARCH_CHARS {
        let asked = text.clone();
        let before = query.before;
        let visible = signed.visible.clone();
        Some(
            console
                .index
                .query(move |index| index.search_code(&asked, before, PAGE_HITS, &visible))
                .await,
        )
    } else {
        None
    };
    let hits = match hits {
        Some(Ok(hits)) => Some(hits),
        Some(Err(QueryError::Index(IndexError::SearchTooShort))) | None => None,
        Some(Err(error)) => return query_failed(error),
    };
    let body = html! {
        form #search-form class="filter-bar" method="get" action=(console.url("search")) {
            input type="search" name="q" value=(text) autofocus size="50" placeholder="Text in the code (3 characters at least)";
            button type="submit" { "Search" }
        }
        @if !text.is_empty() && text.chars().count() < MIN_SEARCH_CHARS {
            p class="problem" { "A search needs at least " (MIN_SEARCH_CHARS) " characters." }
        }
        @if let Some(hits) = &hits {
            @if hits.is_empty() { p #no-hits class="empty" { "No cell contains it." } }
            ol #hits class="hits" {
                @for hit in hits {
                    @let user = hit.user.as_deref().unwrap_or("?");
                    li class="hit" data-session-id=(hit.session_id) {
                        p class="hit-head" {
                            a class="hit-link" href=(console.url(&format!("session/{}?from={}#cell-{}", hit.cell.session, hit.cell.first_sequence, hit.cell.id))) {
                                "[" (hit.cell.execution_count.map_or(" ".to_owned(), |n| n.to_string())) "] "
                                (hit.notebook.as_deref().unwrap_or("(no notebook)"))
                            }
                            " by " a href=(console.url(&format!("user/{}", encode(user)))) { (user) }
                            " at " (short_time(hit.cell.requested_at.as_deref()))
                        }
                        pre class="code" { code { (PreEscaped(excerpt(hit.cell.code.as_deref().unwrap_or(""), &text))) } }
                    }
                }
            }
            @if hits.len() == PAGE_HITS && let Some(last) = hits.last() {
                p class="paging" { a #next-page rel="next" href={ (console.url("search")) "?q=" (encode(&text)) "&before=" (last.cell.id) } { "Older hits →" } }
            }
        }
    };
    shell(&console, &signed, Nav::Search, "Code search", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_mark_the_match_and_escape_the_rest() {
        let code = "a = 1\nb = 2\nc = 3\n<script>SECRET_token</script>\nd = 4\ne = 5\nf = 6";
        let shown = excerpt(code, "secret_TOKEN");
        assert_eq!(
            shown,
            "b = 2\nc = 3\n&lt;script&gt;<mark>SECRET_token</mark>&lt;/script&gt;\nd = 4\ne = 5"
        );
    }
}
