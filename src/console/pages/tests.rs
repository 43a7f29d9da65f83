//! Handler tests: the pages over a real store and index, called as axum calls them, with
//! a reviewer who holds the outputs scope and one who does not.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Form;
use axum::body::to_bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::console::auth::{SCOPE_READ, SCOPE_READ_OUTPUTS, Session};
use crate::console::index::Visibility;
use crate::console::pool::IndexPool;
use crate::console::server::tests::hub;
use crate::console::server::{Console, SignedIn};
use crate::console::trail::Reviewer;
use crate::store::{self, StoreConfig};

fn record(second: u32, action: &str, jupyter: Value) -> Map<String, Value> {
    let mut fields = jupyter;
    fields["session_id"] = json!("s-hostile");
    fields["kernel_name"] = json!("python3");
    let value = json!({
        "@timestamp": format!("2026-05-01T12:00:{second:02}Z"),
        "event": {"action": action, "kind": "event"},
        "host": {"name": "node-1"},
        "jupyter": fields,
        "process": {"pid": 4242, "user": {"id": "1000"}},
        "user": {"name": "alice", "verified_by": "jupyterhub"},
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

/// A console over a store with one session: a cell whose outputs are hostile HTML,
/// a traceback and a PNG.
async fn console() -> (tempfile::TempDir, Console) {
    let records = vec![
        record(0, "session_start", json!({"notebook_path": "work/a.ipynb"})),
        record(
            1,
            "execute_request",
            json!({"msg_id": "r1", "code": "show('<script>alert(1)</script>')"}),
        ),
        record(
            2,
            "display_data",
            json!({"parent_msg_id": "r1", "data": {
            "text/html": "<script>alert(1)</script><img src=x onerror=alert(2)>",
            "text/plain": "<HTML>"}}),
        ),
        record(
            3,
            "display_data",
            json!({"parent_msg_id": "r1", "data": {"image/png": "iVBORw0KGgo="}}),
        ),
        record(
            4,
            "error",
            json!({"parent_msg_id": "r1", "ename": "ValueError", "evalue": "bad",
            "traceback": "\u{1b}[0;31mValueError\u{1b}[0m: bad <b>"}),
        ),
        record(
            5,
            "execute_reply",
            json!({"parent_msg_id": "r1", "status": "error", "execution_count": 1}),
        ),
        {
            let mut interrupt = record(5, "interrupt", json!({}));
            interrupt["event"]["signal"] = json!("SIGINT");
            interrupt
        },
        record(
            6,
            "session_end",
            json!({"exit_code": 0, "exit_signal": null, "orphaned": false}),
        ),
    ];
    console_over(records).await
}

/// A console over a store of `records`, indexed.
async fn console_over(records: Vec<Map<String, Value>>) -> (tempfile::TempDir, Console) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (handle, _) = store::open(StoreConfig::new(&dir)).unwrap();
    let writer = std::thread::spawn(move || {
        for record in records {
            handle.append_blocking(record).unwrap();
        }
        handle
    });
    let handle = writer.join().unwrap();
    drop(handle);
    let pool = IndexPool::start(
        &crate::console::ConsoleSource::Store(dir.clone()),
        &tmp.path().join("index.sqlite"),
    )
    .unwrap();
    for _ in 0..100 {
        if pool.progress.ready.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pool.progress.ready.load(Ordering::Relaxed), "indexed");
    (tmp, Console::for_tests(hub(None), dir, pool))
}

fn signed(outputs: bool) -> SignedIn {
    let mut scopes = vec![SCOPE_READ.to_owned()];
    if outputs {
        scopes.push(SCOPE_READ_OUTPUTS.to_owned());
    }
    SignedIn {
        session: Session {
            user: "auditor".into(),
            scopes,
            expires: u64::MAX,
        },
        reviewer: Reviewer {
            name: "auditor".into(),
            outputs_visible: outputs,
            scopes: Vec::new(),
        },
        visible: Visibility::All,
        outputs: outputs.then_some(Visibility::All),
    }
}

async fn body(response: Response) -> String {
    String::from_utf8(
        to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_auditor_sees_outputs_in_safe_forms_and_a_reviewer_sees_none() {
    let (_tmp, console) = console().await;
    let page = super::session::show(
        State(console.clone()),
        signed(true),
        Path(1),
        Query(Default::default()),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let viewed = console.trail.kept_records();
    let review = viewed.last().and_then(|record| record.get("review"));
    assert_eq!(
        review.and_then(|review| review.get("view")),
        Some(&serde_json::json!("session")),
        "the view is on the record: {viewed:?}"
    );
    assert_eq!(
        review.and_then(|review| review.get("outputs")),
        Some(&serde_json::json!(true))
    );
    let html = body(page).await;
    assert!(
        html.contains("&#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;"),
        "{html}"
    );
    assert!(
        html.contains("<iframe class=\"html-output\" sandbox=\"\""),
        "{html}"
    );
    assert!(
        html.contains("src=\"data:image/png;base64,iVBORw0KGgo=\""),
        "{html}"
    );
    assert!(
        html.contains("<span class=\"ansi-fg-1\">ValueError</span>: bad &lt;b&gt;"),
        "{html}"
    );
    assert!(
        html.contains("<li class=\"event interrupt\""),
        "the interrupt is shown: {html}"
    );
    for live in ["<script", "onerror=", "<b>"] {
        assert!(!html.contains(live), "{live} in {html}");
    }
    let frame = super::session::output(State(console.clone()), signed(true), Path((1, 3))).await;
    assert_eq!(frame.status(), StatusCode::OK);
    let policy = frame.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with("sandbox;"), "{policy}");
    assert!(
        body(frame).await.contains("<script>alert(1)</script>"),
        "inert in its sandbox"
    );
    // A sequence that is not an HTML output of this session.
    let other = super::session::output(State(console.clone()), signed(true), Path((1, 2))).await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    let page = super::session::show(
        State(console.clone()),
        signed(false),
        Path(1),
        Query(Default::default()),
    )
    .await;
    let html = body(page).await;
    assert!(html.contains("id=\"outputs-hidden\""), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)"), "the code is shown");
    for output in ["class=\"output", "data:image", "<iframe", "ValueError"] {
        assert!(!html.contains(output), "{output} in {html}");
    }
    let frame = super::session::output(State(console.clone()), signed(false), Path((1, 3))).await;
    assert_eq!(frame.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn lists_search_and_marks() {
    let (_tmp, console) = console().await;
    let list = super::sessions::list(
        State(console.clone()),
        signed(false),
        Query(super::sessions::Filters {
            errors: Some("1".into()),
            ..Default::default()
        }),
    )
    .await;
    let html = body(list).await;
    assert!(html.contains("data-session-id=\"s-hostile\""), "{html}");
    let search = super::search::search(
        State(console.clone()),
        signed(false),
        Query(serde_json::from_value(json!({"q": "<script>"})).unwrap()),
    )
    .await;
    let html = body(search).await;
    assert!(
        html.contains("href=\"/services/jupyter-audit/session/1?from=2#cell-1\""),
        "{html}"
    );
    assert!(html.contains("<mark>&lt;script&gt;</mark>"), "{html}");

    let form = |csrf: String| {
        Form(
            serde_json::from_value::<super::session::MarkForm>(
                json!({"csrf": csrf, "mark": "flagged", "note": "odd"}),
            )
            .unwrap(),
        )
    };
    let forged = super::session::mark(
        State(console.clone()),
        signed(false),
        Path(1),
        form("00".repeat(32)),
    )
    .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let reviewer = signed(false);
    let token = console.csrf_token(&reviewer.session);
    let marked = super::session::mark(State(console.clone()), reviewer, Path(1), form(token)).await;
    assert_eq!(marked.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_huge_session_is_shown_a_page_of_cells_at_a_time_and_huge_code_cut() {
    let huge = format!("x = '{}'", "y".repeat(200_000));
    let mut records = vec![record(0, "session_start", json!({}))];
    for n in 0..501 {
        let code = if n == 0 {
            huge.clone()
        } else {
            format!("cell_{n} = {n}")
        };
        records.push(record(
            1,
            "execute_request",
            json!({"msg_id": format!("r{n}"), "code": code}),
        ));
    }
    let (_tmp, console) = console_over(records).await;
    let page = super::session::show(
        State(console.clone()),
        signed(true),
        Path(1),
        Query(Default::default()),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = body(page).await;
    assert!(!html.contains(&"y".repeat(70_000)), "the huge cell is cut");
    assert!(html.contains("more characters of this cell not shown"));
    assert!(html.contains("cell_499 ") && !html.contains("cell_500 "));
    let next = html
        .split("id=\"next-cells\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to the next cells");
    let from: u64 = next.rsplit("from=").next().unwrap().parse().unwrap();
    let page = super::session::show(
        State(console.clone()),
        signed(true),
        Path(1),
        Query(serde_json::from_value(json!({"from": from})).unwrap()),
    )
    .await;
    let html = body(page).await;
    assert!(html.contains("cell_500 ") && !html.contains("cell_499 "));
    assert!(html.contains("id=\"first-cells\""));
}
