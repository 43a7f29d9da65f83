//! The review console's records through the real collector server and store: its OS
//! account writes review records and nothing else, and nobody else writes them.

use std::time::Duration;

use serde_json::{Value, json};

use super::client::{AuditClient, AuditError};
use super::hub::{HubAttestor, HubOptions, HubPolicy};
use super::limits::{Fairness, Limits};
use super::server::{self, ConsoleAccounts};
use crate::audit::{Record, RecordBuilder, SessionContext, SizePolicy, event_record};
use crate::console::trail::{Mark, ReviewTrail, Reviewer, TrailError, Viewed};
use crate::store::{self, Reader, StoreConfig, StoreHandle};

/// Guards against a hang only: the bounds themselves are the trail's.
const HANG: Duration = Duration::from_secs(60);

fn our_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// A running collector: its store, socket, and the sender that stops it.
type Started = (
    StoreHandle,
    std::path::PathBuf,
    tokio::sync::oneshot::Sender<()>,
);

/// A collector on a store in `dir`, whose console accounts are `console`.
fn start_collector(dir: &std::path::Path, console: ConsoleAccounts) -> Started {
    start_collector_with_hub(dir, console, None)
}

/// [`start_collector`], asking `hub` whose kernel each connection is.
fn start_collector_with_hub(
    dir: &std::path::Path,
    console: ConsoleAccounts,
    hub: Option<std::sync::Arc<HubAttestor>>,
) -> Started {
    let socket = dir.join("collector.sock");
    let (handle, _) = store::open(StoreConfig::new(dir.join("store"))).expect("store opens");
    let listener = server::bind(&socket, 0o600).expect("socket binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = handle.clone();
    tokio::spawn(async move {
        let fairness = Fairness::new(Limits::default(), None);
        server::serve_fairly(listener, serving, fairness, hub, console, async {
            let _ = stopped.await;
        })
        .await;
    });
    (handle, socket, stop)
}

async fn stored(store: StoreHandle, dir: &std::path::Path) -> Vec<Value> {
    store.shutdown().await.expect("closed");
    Reader::open(&dir.join("store"))
        .expect("readable")
        .map(|record| record.expect("valid record").value)
        .collect()
}

fn auditor() -> Reviewer {
    Reviewer {
        name: "auditor".into(),
        outputs_visible: true,
        scopes: Vec::new(),
    }
}

fn kernel_context() -> SessionContext {
    SessionContext {
        session_id: "kernel-session".into(),
        kernel_id: None,
        kernel_name: None,
    }
}

fn execute_request(context: &SessionContext) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("code".into(), json!("print(1)"));
    event_record(context, "execute_request", fields)
}

fn of_action<'a>(records: &'a [Value], action: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|record| record["event"]["action"] == action)
        .collect()
}

#[tokio::test]
async fn the_console_account_puts_views_and_marks_on_the_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, socket, _stop) = start_collector(dir.path(), ConsoleAccounts::new([our_uid()]));
    let trail = ReviewTrail::connect(socket);
    let auditor = auditor();
    let reviewer = Reviewer {
        name: "reviewer".into(),
        outputs_visible: false,
        scopes: Vec::new(),
    };
    let viewed = trail.viewed(
        &auditor,
        Viewed::Session {
            session_id: "alice-session".into(),
            outputs: true,
        },
    );
    tokio::time::timeout(HANG, viewed)
        .await
        .expect("answered")
        .expect("recorded");
    let marked = trail.mark(&auditor, "alice-session", Mark::Flagged, "reads ~/.ssh");
    tokio::time::timeout(HANG, marked)
        .await
        .expect("answered")
        .expect("recorded");
    // Concurrent page views share the one connection, and all land.
    let views = (0..40).map(|n| {
        trail.viewed(
            &reviewer,
            Viewed::Search {
                query: format!("needle {n}"),
            },
        )
    });
    for result in tokio::time::timeout(HANG, futures_util::future::join_all(views))
        .await
        .expect("answered")
    {
        result.expect("recorded");
    }

    let records = stored(store, dir.path()).await;
    let session = trail.session_id().expect("a console session");
    let access = of_action(&records, "review_access");
    assert_eq!(access.len(), 41);
    assert_eq!(
        access[0]["review"],
        json!({"reviewer": {"name": "auditor",
                            "scopes": ["custom:jupyter-audit:read", "custom:jupyter-audit:read-outputs"]},
               "view": "session", "session_id": "alice-session", "outputs": true})
    );
    let searches: Vec<&Value> = access[1..].iter().map(|r| &r["review"]["query"]).collect();
    assert_eq!(searches.len(), 40);
    assert!(access[1..].iter().all(|r| r["review"]["reviewer"]
        == json!({"name": "reviewer", "scopes": ["custom:jupyter-audit:read"]})));
    let marks = of_action(&records, "review_mark");
    assert_eq!(marks.len(), 1);
    assert_eq!(
        marks[0]["review"],
        json!({"reviewer": {"name": "auditor",
                            "scopes": ["custom:jupyter-audit:read", "custom:jupyter-audit:read-outputs"]},
               "view": "mark", "session_id": "alice-session", "mark": "flagged",
               "note": "reads ~/.ssh"})
    );
    for record in access.iter().chain(&marks) {
        assert_eq!(record["jupyter"], json!({"session_id": session}));
        assert_eq!(record["user"]["id"], json!(our_uid().to_string()));
        assert_eq!(record["user"]["verified_by"], "peercred");
        assert_eq!(record["process"]["pid"], json!(std::process::id()));
        assert_eq!(record["event"]["outcome"], "success");
    }
    assert!(of_action(&records, "record_refused").is_empty());
}

#[tokio::test]
async fn a_hub_user_refused_a_page_is_on_the_record_once_a_minute_per_page() {
    use crate::console::auth::{SCOPE_READ, Session};
    use crate::console::pool::IndexPool;
    use crate::console::server::{Console, refuse, tests::hub};

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, socket, _stop) = start_collector(dir.path(), ConsoleAccounts::new([our_uid()]));
    let index = IndexPool::start(
        &crate::console::ConsoleSource::Store(dir.path().join("store")),
        &dir.path().join("index.sqlite"),
    )
    .expect("index");
    let mut console = Console::for_tests(hub(None), dir.path().join("store"), index);
    console.trail = ReviewTrail::connect(socket);
    // Signed in through the Hub, without any console scope.
    let plain = Session {
        user: "plain".into(),
        scopes: Vec::new(),
        expires: u64::MAX,
    };
    let search: axum::http::Uri = "/services/jupyter-audit/search?q=secret+key"
        .parse()
        .expect("uri");
    for _reload in 0..3 {
        let answer = tokio::time::timeout(HANG, refuse(&console, &plain, &search, SCOPE_READ))
            .await
            .expect("answered");
        assert_eq!(answer.status(), axum::http::StatusCode::FORBIDDEN);
    }
    let health: axum::http::Uri = "/services/jupyter-audit/health".parse().expect("uri");
    let answer = tokio::time::timeout(HANG, refuse(&console, &plain, &health, SCOPE_READ))
        .await
        .expect("answered");
    assert_eq!(answer.status(), axum::http::StatusCode::FORBIDDEN);
    // Another user's refusal of the same page is its own record.
    let other = Session {
        user: "mallory".into(),
        ..plain.clone()
    };
    tokio::time::timeout(HANG, refuse(&console, &other, &search, SCOPE_READ))
        .await
        .expect("answered");

    let records = stored(store, dir.path()).await;
    let refused: Vec<(String, String, String)> = of_action(&records, "review_access")
        .into_iter()
        .map(|record| {
            assert_eq!(record["event"]["outcome"], "failure", "{record}");
            assert_eq!(
                record["review"]["reviewer"]["scopes"],
                json!([]),
                "{record}"
            );
            (
                record["review"]["reviewer"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                record["review"]["view"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                record["review"]["query"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("plain".into(), "search".into(), "secret key".into()),
            ("plain".into(), "health".into(), String::new()),
            ("mallory".into(), "search".into(), "secret key".into()),
        ],
        "three reloads of one page are one record"
    );
    assert!(of_action(&records, "record_refused").is_empty());
}

#[tokio::test]
async fn the_console_account_cannot_write_a_kernels_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, socket, _stop) = start_collector(dir.path(), ConsoleAccounts::new([our_uid()]));
    let recorder = Box::new(RecordBuilder::new(kernel_context(), SizePolicy::default()));
    let (client, _) = AuditClient::spawn(socket, kernel_context(), recorder);
    let refused = client
        .submit_durable(execute_request(&kernel_context()))
        .wait(HANG)
        .await;
    match refused {
        Err(AuditError::NotStored(reason)) => {
            assert!(reason.contains("review console"), "{reason}")
        }
        other => panic!("not refused: {other:?}"),
    }
    let records = stored(store, dir.path()).await;
    assert!(of_action(&records, "execute_request").is_empty());
    let refusals = of_action(&records, "record_refused");
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        refusals[0]["collector"]["refused"]["action"],
        "execute_request"
    );
    assert_eq!(refusals[0]["user"]["id"], json!(our_uid().to_string()));
}

#[tokio::test]
async fn no_one_else_writes_review_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The console is another account: this process is any notebook user.
    let (store, socket, _stop) = start_collector(
        dir.path(),
        ConsoleAccounts::new([our_uid().wrapping_add(1)]),
    );
    let trail = ReviewTrail::connect(socket.clone());
    let refused = tokio::time::timeout(HANG, trail.viewed(&auditor(), Viewed::Health))
        .await
        .expect("answered");
    match refused {
        Err(TrailError::Unavailable(reason)) => {
            assert!(reason.contains("--console-user"), "{reason}")
        }
        Ok(()) => panic!("a notebook user's review record was taken"),
    }
    // A kernel's own session with a review object slipped in: refused too.
    let recorder = Box::new(RecordBuilder::new(kernel_context(), SizePolicy::default()));
    let (client, _) = AuditClient::spawn(socket, kernel_context(), recorder);
    let mut forged = execute_request(&kernel_context());
    forged.insert(
        "review".into(),
        json!({"reviewer": {"name": "auditor", "scopes": []}, "view": "health"}),
    );
    let refused = client.submit_durable(forged).wait(HANG).await;
    assert!(
        matches!(refused, Err(AuditError::NotStored(ref reason)) if reason.contains("review")),
        "{refused:?}"
    );

    let records = stored(store, dir.path()).await;
    assert!(of_action(&records, "review_access").is_empty());
    assert!(records.iter().all(|record| record.get("review").is_none()));
    let refusals = of_action(&records, "record_refused");
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(
        refusals[0]["collector"]["refused"]["action"],
        "review_access"
    );
    assert!(
        refusals[0]["collector"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("--console-user")),
        "{}",
        refusals[0]
    );
    assert_eq!(
        refusals[1]["collector"]["refused"]["fields"],
        json!(["review"])
    );
}

#[tokio::test]
async fn without_a_collector_a_view_is_refused_not_kept_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trail = ReviewTrail::connect(dir.path().join("no-collector.sock"));
    for _ in 0..3 {
        let answer = tokio::time::timeout(HANG, trail.viewed(&auditor(), Viewed::Running))
            .await
            .expect("answered within the trail's own bound");
        assert!(
            matches!(answer, Err(TrailError::Unavailable(_))),
            "{answer:?}"
        );
    }
    let none = ReviewTrail::default();
    assert!(none.viewed(&auditor(), Viewed::Running).await.is_err());
}

#[tokio::test]
async fn the_console_is_known_by_its_account_where_kernels_need_the_hubs_word() {
    // Hub identity required, and the Hub out of reach: every kernel is refused.
    let hub = HubAttestor::new(&HubOptions {
        api_url: "http://127.0.0.1:9/hub/api".into(),
        ca_file: None,
        client_identity: None,
        policy: HubPolicy::Required,
        cache_max_age: HubOptions::DEFAULT_CACHE_MAX_AGE,
    })
    .expect("hub options");
    let hub = Some(std::sync::Arc::new(hub));
    let console_dir = tempfile::tempdir().expect("tempdir");
    let (store, socket, _stop) = start_collector_with_hub(
        console_dir.path(),
        ConsoleAccounts::new([our_uid()]),
        hub.clone(),
    );
    let trail = ReviewTrail::connect(socket);
    tokio::time::timeout(HANG, trail.viewed(&auditor(), Viewed::Health))
        .await
        .expect("answered")
        .expect("the console's view is recorded without the Hub");
    let records = stored(store, console_dir.path()).await;
    assert_eq!(of_action(&records, "review_access").len(), 1);
    assert!(of_action(&records, "identity_refused").is_empty());

    let kernel_dir = tempfile::tempdir().expect("tempdir");
    let (store, socket, _stop) = start_collector_with_hub(
        kernel_dir.path(),
        ConsoleAccounts::new([our_uid().wrapping_add(1)]),
        hub,
    );
    let trail = ReviewTrail::connect(socket);
    let refused = tokio::time::timeout(HANG, trail.viewed(&auditor(), Viewed::Health))
        .await
        .expect("answered");
    assert!(refused.is_err(), "not the console: the Hub policy applies");
    let records = stored(store, kernel_dir.path()).await;
    assert!(of_action(&records, "review_access").is_empty());
    assert_eq!(of_action(&records, "identity_refused").len(), 1);
}
