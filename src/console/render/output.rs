//! One output as HTML, safely: text and tracebacks escaped (ANSI colours as classes),
//! PNG/JPEG/GIF as `<img src="data:…">` after checking the base64, SVG only as an image
//! (never inline, so its scripts cannot run), HTML only in a sandboxed `<iframe>` (no
//! scripts, no same origin) loaded from the output route, which answers with a sandboxing
//! CSP of its own; Markdown, LaTeX and JSON as their source.

use base64::Engine;
use maud::{Markup, PreEscaped, html};
use serde_json::{Map, Value};

use super::ansi;
use crate::console::outputs::{MAX_IMAGE_BYTES, MAX_OUTPUT_TEXT, Output, cut_text};

/// The answer of the output route for an HTML output: no scripts, no plugins, no
/// requests, an opaque origin; inline styles and inline images only.
pub const SANDBOX_CSP: &str =
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'";

const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif"];
/// Shown as their source text: what a notebook would render or run (JavaScript included:
/// an auditor wants to read what it tried to run in its users' browsers).
const SOURCE_TYPES: &[&str] = &[
    "application/javascript",
    "text/markdown",
    "text/latex",
    "application/json",
];

/// Whether `text` is plain base64 (whitespace allowed), so it can go in a data: URL.
fn is_base64(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// A text shown in a `<pre>`, cut at [`MAX_OUTPUT_TEXT`] with a note.
fn pre(class: &str, text: &str, cut_already: usize) -> Markup {
    let mut text = text.to_owned();
    let cut = cut_already + cut_text(&mut text, MAX_OUTPUT_TEXT);
    html! {
        pre class=(class) { (PreEscaped(ansi::to_html(&text))) }
        @if cut > 0 { p class="note truncated" { "… " (cut) " more bytes not shown (cut at " (MAX_OUTPUT_TEXT / 1024) " KiB)." } }
    }
}

/// The HTML of one output; `frame_url` gives the output route's address of a sequence.
pub fn render(output: &Output, frame_url: &dyn Fn(u64) -> String) -> Markup {
    match output {
        Output::Stream { name, text, cut } => html! {
            div class={ "output stream " (if name == "stderr" { "stderr" } else { "stdout" }) } {
                (pre("text", text, *cut))
            }
        },
        Output::Error {
            ename,
            evalue,
            traceback,
        } => html! {
            div class="output error" {
                @if traceback.is_empty() {
                    (pre("text", &format!("{ename}: {evalue}"), 0))
                } @else {
                    (pre("text traceback", traceback, 0))
                }
            }
        },
        Output::Data {
            sequence, bundle, ..
        } => html! {
            div class="output data" data-sequence=(sequence) { (data(*sequence, bundle, frame_url)) }
        },
        Output::Omitted { outputs } => html! {
            div class="output omitted" {
                p class="note" { (outputs) " more output(s) not shown: this page holds enough already. The .ipynb download has them all." }
            }
        },
    }
}

fn data(sequence: u64, bundle: &Map<String, Value>, frame_url: &dyn Fn(u64) -> String) -> Markup {
    if bundle.contains_key("text/html") {
        return html! {
            iframe class="html-output" sandbox="" referrerpolicy="no-referrer" loading="lazy"
                title="HTML output (sandboxed, scripts off)" src=(frame_url(sequence)) {}
        };
    }
    if let Some(svg) = bundle.get("image/svg+xml").and_then(Value::as_str) {
        if svg.len() > MAX_IMAGE_BYTES {
            return too_big("image/svg+xml", svg.len());
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(svg);
        return html! { img class="image" alt="SVG output" src={ "data:image/svg+xml;base64," (encoded) }; };
    }
    for mime in IMAGE_TYPES {
        if let Some(encoded) = bundle.get(*mime).and_then(Value::as_str) {
            if !is_base64(encoded) {
                // Not kept as bytes (a placeholder line): show what the store says.
                return pre("text", encoded, 0);
            }
            if encoded.len() > MAX_IMAGE_BYTES {
                return too_big(mime, encoded.len() / 4 * 3);
            }
            let clean: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
            return html! { img class="image" alt=(mime) src={ "data:" (mime) ";base64," (clean) }; };
        }
    }
    for mime in SOURCE_TYPES {
        if let Some(value) = bundle.get(*mime) {
            return html! {
                p class="mime" { (mime) " (shown as source)" }
                (pre("text source", &text_of(value), 0))
            };
        }
    }
    if let Some(value) = bundle.get("text/plain") {
        return pre("text", &text_of(value), 0);
    }
    html! {
        p class="note" {
            "Output of type "
            @for (index, mime) in bundle.keys().enumerate() {
                @if index > 0 { ", " }
                code { (mime) }
            }
            " (not shown here)."
        }
    }
}

fn too_big(mime: &str, bytes: usize) -> Markup {
    html! { p class="note truncated" { (mime) " of " (bytes) " bytes: too large to show here (the .ipynb download has it)." } }
}

/// The document the output route answers for an HTML output: the output's HTML as it
/// is (the sandbox and CSP keep it inert), cut at [`MAX_OUTPUT_TEXT`].
pub fn sandboxed_document(bundle: &Map<String, Value>) -> Option<String> {
    let mut html = text_of(bundle.get("text/html")?);
    let cut = cut_text(&mut html, MAX_OUTPUT_TEXT);
    if cut > 0 {
        html.push_str(&format!("<p>… {cut} more bytes not shown.</p>"));
    }
    Some(format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>{html}</body></html>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(sequence: u64) -> String {
        format!("/p/session/1/output/{sequence}")
    }

    fn data_html(bundle: Value) -> String {
        let Value::Object(bundle) = bundle else {
            panic!("not an object")
        };
        render(
            &Output::Data {
                sequence: 7,
                bundle,
                display_id: None,
            },
            &frame,
        )
        .into_string()
    }

    #[test]
    fn html_goes_into_a_sandboxed_frame_only() {
        let page = data_html(json!({
            "text/html": "<script>alert(1)</script><img src=x onerror=alert(2)><a href=\"javascript:alert(3)\">x</a>",
            "text/plain": "<DataFrame>"
        }));
        assert!(page.contains("<iframe"), "{page}");
        assert!(page.contains("sandbox=\"\""), "{page}");
        assert!(page.contains("src=\"/p/session/1/output/7\""), "{page}");
        for hostile in ["<script", "onerror", "javascript:", "<img", "<a "] {
            assert!(!page.contains(hostile), "{hostile} in {page}");
        }
    }

    #[test]
    fn svg_is_only_an_image() {
        let page = data_html(json!({
            "image/svg+xml": "<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"><script>alert(2)</script></svg>"
        }));
        assert!(page.starts_with("<div class=\"output data\""), "{page}");
        assert!(
            page.contains(
                "<img class=\"image\" alt=\"SVG output\" src=\"data:image/svg+xml;base64,"
            )
        );
        for hostile in ["<svg", "<script", "onload"] {
            assert!(!page.contains(hostile), "{hostile} in {page}");
        }
    }

    #[test]
    fn images_need_real_base64() {
        let page = data_html(json!({"image/png": "iVBORw0KGgo=\n", "text/plain": "<Figure>"}));
        assert!(
            page.contains("src=\"data:image/png;base64,iVBORw0KGgo=\""),
            "{page}"
        );
        let hostile = data_html(json!({"image/png": "\" onerror=\"alert(1)"}));
        assert!(!hostile.contains("<img"), "{hostile}");
        assert!(!hostile.contains("\" onerror"), "{hostile}");
    }

    #[test]
    fn markdown_json_and_text_are_source() {
        let page = data_html(json!({"text/markdown": "[x](javascript:alert(1)) <b>bold</b>"}));
        assert!(
            page.contains("[x](javascript:alert(1)) &lt;b&gt;bold&lt;/b&gt;"),
            "{page}"
        );
        assert!(!page.contains("<a"), "{page}");
        let page = data_html(json!({"application/json": {"a": "<script>"}}));
        assert!(
            page.contains("&quot;a&quot;: &quot;&lt;script&gt;&quot;"),
            "{page}"
        );
    }

    #[test]
    fn tracebacks_are_coloured_and_escaped() {
        let page = render(
            &Output::Error {
                ename: "ValueError".into(),
                evalue: "<b>".into(),
                traceback: "\u{1b}[0;31mValueError\u{1b}[0m: <script>x</script>".into(),
            },
            &frame,
        )
        .into_string();
        assert!(
            page.contains("<span class=\"ansi-fg-1\">ValueError</span>"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script"), "{page}");
    }

    #[test]
    fn huge_outputs_are_cut_with_a_note() {
        let page = render(
            &Output::Stream {
                name: "stdout".into(),
                text: "y".repeat(MAX_OUTPUT_TEXT * 2),
                cut: 0,
            },
            &frame,
        )
        .into_string();
        assert!(page.len() < MAX_OUTPUT_TEXT + 1000);
        assert!(page.contains("more bytes not shown"), "truncation is said");
        let big = "A".repeat(MAX_IMAGE_BYTES + 4);
        let page = data_html(json!({ "image/png": big }));
        assert!(!page.contains("<img"));
        assert!(page.contains("too large"));
    }

    #[test]
    fn the_frame_document_keeps_the_html_as_is_for_the_sandbox() {
        let Value::Object(bundle) = json!({"text/html": "<table><tr><td>1</td></tr></table>"})
        else {
            panic!()
        };
        let document = sandboxed_document(&bundle).unwrap();
        assert!(document.contains("<table><tr><td>1</td></tr></table>"));
        assert!(SANDBOX_CSP.starts_with("sandbox;"));
        assert!(!SANDBOX_CSP.contains("script-src"));
    }
}
