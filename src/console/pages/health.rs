//! The store's health (`P/health`): the verify result (the store's own [`verify`], or
//! `verify --postgres` over every forwarded store with each one's newest checkpoint, run
//! in the background and kept with its time, since a full check of a big store takes
//! seconds), the last stored record and checkpoint and forwarding (what `status`
//! says), rejections, audit gaps and other trouble the store recorded, the collectors
//! seen starting and stopping, and how far the console's index lags.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::{Nav, query_failed, record_view, shell, short_time};
use crate::console::ConsoleSource;
use crate::console::auth::SCOPE_READ;
use crate::console::index::{StoreEvent, Visibility};
use crate::console::server::{Console, SignedIn, refuse_view};
use crate::console::trail::Viewed;
use crate::postgres::status::{self, StatusOptions, StoreStatus};
use crate::postgres::verify::{StoreVerdict, VerifyOptions, verify as postgres_verify};
use crate::store::verify;

/// A verify result older than this is redone (in the background) when the page is opened.
const VERIFY_EVERY: Duration = Duration::from_secs(10 * 60);
const LIST_EVENTS: usize = 20;

/// The last verify result and when it was made.
#[derive(Debug, Clone)]
pub struct Verified {
    pub at: String,
    pub took: Duration,
    /// The report as `verify` prints it, and whether the store is intact.
    pub outcome: Result<(String, bool), String>,
    /// From PostgreSQL: the verdict on each forwarded store (its host, records, newest
    /// checkpoint), which tells how far each collector's forwarding has come.
    pub stores: Vec<StoreVerdict>,
}

/// The verify result kept between page views.
#[derive(Debug, Default)]
pub struct HealthCache {
    verified: Mutex<Option<(Instant, Verified)>>,
    running: std::sync::atomic::AtomicBool,
}

impl HealthCache {
    /// The last result; starts a new verify in the background when it is old or missing.
    fn verified(self: &std::sync::Arc<Self>, console: &Console) -> Option<Verified> {
        let last = self.verified.lock().ok().and_then(|kept| kept.clone());
        let stale = last
            .as_ref()
            .is_none_or(|(when, _)| when.elapsed() > VERIFY_EVERY);
        if stale && !self.running.swap(true, Ordering::SeqCst) {
            let cache = self.clone();
            let source = console.source.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let mut stores = Vec::new();
                let outcome = match source.as_ref() {
                    ConsoleSource::Store(store) => verify(store, None, None)
                        .map(|report| (report.to_string(), report.is_intact()))
                        .map_err(|error| error.to_string()),
                    ConsoleSource::Postgres(options) => postgres_verify(&VerifyOptions {
                        postgres: options.clone(),
                        store_id: None,
                        keys: Vec::new(),
                    })
                    .map(|report| {
                        let text = (report.to_string(), report.is_intact());
                        stores = report.stores;
                        text
                    })
                    .map_err(|error| error.to_string()),
                };
                let verified = Verified {
                    at: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    took: started.elapsed(),
                    outcome,
                    stores,
                };
                if let Ok(mut kept) = cache.verified.lock() {
                    *kept = Some((Instant::now(), verified));
                }
                cache.running.store(false, Ordering::SeqCst);
            });
        }
        last.map(|(_, verified)| verified)
    }
}

struct Facts {
    /// The store directory's status (None: the console reads PostgreSQL).
    status: Option<Result<StoreStatus, String>>,
    counts: Vec<(String, u64)>,
    trouble: Vec<StoreEvent>,
    collectors: Vec<StoreEvent>,
}

/// `P/health`.
pub async fn health(State(console): State<Console>, signed: SignedIn) -> Response {
    // The store's health is about everyone's sessions (gaps, refusals, collectors):
    // only an unfiltered grant shows it.
    if signed.visible != Visibility::All {
        return refuse_view(&console, &signed.session, Viewed::Health, SCOPE_READ).await;
    }
    if let Err(response) = record_view(&console, &signed, Viewed::Health).await {
        return response;
    }
    let verified = console.health.verified(&console);
    let status = match console.source.store_dir() {
        Some(store) => {
            let store = store.to_path_buf();
            Some(
                tokio::task::spawn_blocking(move || {
                    status::read(&StatusOptions { store }).map_err(|error| error.to_string())
                })
                .await
                .unwrap_or_else(|error| Err(error.to_string())),
            )
        }
        None => None,
    };
    let facts = console
        .index
        .query(move |index| {
            Ok(Facts {
                status,
                counts: index.event_counts()?,
                trouble: index.events(
                    &[
                        "message_rejected",
                        "rejections_suppressed",
                        "audit_gap",
                        "record_refused",
                        "refusals_suppressed",
                        "forged_record",
                        "identity_refused",
                        "limit_exceeded",
                        "forward_conflict",
                        "audit_bypassed",
                    ],
                    LIST_EVENTS,
                )?,
                collectors: index.events(&["collector_start", "collector_stop"], LIST_EVENTS)?,
            })
        })
        .await;
    let facts = match facts {
        Ok(facts) => facts,
        Err(error) => return query_failed(error),
    };
    let progress = &console.index.progress;
    let indexed = progress.indexed.load(Ordering::Relaxed);
    // The store's end is read before each catch-up, which may then index records
    // written meanwhile: the index is never behind what it holds.
    let stored = progress.stored.load(Ordering::Relaxed).max(indexed);
    let index_error = progress
        .last_error
        .lock()
        .ok()
        .and_then(|error| error.clone());
    let count = |action: &str| {
        facts
            .counts
            .iter()
            .find(|(name, _)| name == action)
            .map_or(0, |(_, n)| *n)
    };
    let body = html! {
        h1 { "Store health" }
        section #verify class="panel" {
            h2 { "Verify" }
            @match &verified {
                None => p class="dim" { "Verifying the store now (in the background); reload in a moment." },
                Some(verified) => {
                    @match &verified.outcome {
                        Ok((report, intact)) => {
                            p class={ "verdict " @if *intact { "intact" } @else { "tampered" } } {
                                @if *intact { "Intact" } @else { "NOT intact" }
                            }
                            pre class="text" { (report) }
                        }
                        Err(error) => p class="verdict problem" { "Could not verify: " (error) },
                    }
                    p class="dim" { "Checked at " (short_time(Some(&verified.at))) " in " (format!("{:.1}", verified.took.as_secs_f64())) " s; redone every " (VERIFY_EVERY.as_secs() / 60) " minutes when this page is opened." }
                }
            }
        }
        @if facts.status.is_none() {
            section #forwarded class="panel" {
                h2 { "Forwarded stores" }
                p class="dim" { "Read from " (console.source.label()) "; as of the last verify." }
                @match &verified {
                    None => p class="dim" { "Not verified yet." },
                    Some(verified) => (forwarded_table(&verified.stores)),
                }
            }
        }
        @if let Some(status) = &facts.status {
        section #status class="panel" {
            h2 { "Store" }
            @match status {
                Err(error) => p class="problem" { (error) },
                Ok(status) => dl class="facts" {
                    dt { "Store id" } dd { code { (status.store_id.as_deref().unwrap_or("?")) } }
                    dt { "Last record" } dd #last-record { @if let Some(point) = &status.last_stored { (point.sequence) " at " (short_time(point.time.as_deref())) } @else { "none" } }
                    dt { "Last checkpoint" } dd #last-checkpoint { @if let Some(point) = &status.last_checkpoint { (point.sequence) " at " (short_time(point.time.as_deref())) } @else { "none" } }
                    dt { "Forwarding" } dd #forwarding {
                        @match &status.forwarding {
                            None => "not configured",
                            Some(forwarding) => {
                                (forwarding.target) ": " (forwarding.lag_records) " records behind (" (format!("{:.0}", forwarding.lag_seconds)) " s)"
                                @if let Some(error) = &forwarding.last_error { " — last error: " span class="problem" { (format!("{error:?}")) } }
                            }
                        }
                    }
                },
            }
        }
        }
        section #index-lag class="panel" {
            h2 { "Console index" }
            p { (indexed) " of " (stored) " records indexed (" (stored.saturating_sub(indexed)) " behind)."
                @if let Some(error) = &index_error { " Last error: " span class="problem" { (error) } } }
        }
        section #trouble class="panel" {
            h2 { "Rejections, audit gaps and refusals" }
            table class="grid counts" {
                tbody {
                    @for action in ["message_rejected", "rejections_suppressed", "audit_gap", "record_refused", "refusals_suppressed", "forged_record", "identity_refused", "limit_exceeded", "forward_conflict", "audit_bypassed"] {
                        tr class={ @if count(action) > 0 { "nonzero" } } { td { code { (action) } } td class="num" { (count(action)) } }
                    }
                }
            }
            (events_table(&facts.trouble))
        }
        section #collectors class="panel" {
            h2 { "Collectors" }
            (events_table(&facts.collectors))
        }
    };
    shell(&console, &signed, Nav::Health, "Health", body)
}

/// Each forwarded store: its host, what arrived, its newest signed checkpoint and the
/// records after it (which a root on that host could still erase unseen).
fn forwarded_table(stores: &[StoreVerdict]) -> maud::Markup {
    html! {
        @if stores.is_empty() { p class="empty" { "No store has been forwarded yet." } } @else {
            table class="grid forwarded" {
                thead { tr { th { "Store" } th { "Host" } th { "Records" } th { "Last sequence" } th { "Newest checkpoint" } th { "Not yet checkpointed" } th { "Verdict" } } }
                tbody {
                    @for store in stores {
                        @let last = store.last_sequence.unwrap_or(0);
                        @let checkpointed = store.newest_checkpoint.as_ref().map_or(0, |(sequence, _)| *sequence);
                        tr class="store" {
                            td { code { (store.store_id) } }
                            td { (store.host) }
                            td class="num" { (store.records) }
                            td class="num" { (last) }
                            td { @if let Some((sequence, time)) = &store.newest_checkpoint { (sequence) " at " (short_time(Some(time))) } @else { "none" } }
                            td class="num" { (last.saturating_sub(checkpointed)) }
                            td { @if store.is_intact() { span class="intact" { "intact" } } @else { span class="problem" { "NOT intact" } } }
                        }
                    }
                }
            }
        }
    }
}

fn events_table(events: &[StoreEvent]) -> maud::Markup {
    html! {
        @if events.is_empty() { p class="empty" { "None recorded." } } @else {
            table class="grid events" {
                thead { tr { th { "Sequence" } th { "Time (UTC)" } th { "Action" } th { "Host" } th { "Pid" } th { "What" } } }
                tbody {
                    @for event in events {
                        tr class={ "event " (event.action) } {
                            td class="num" { (event.sequence) }
                            td { (short_time(event.time.as_deref())) }
                            td { code { (event.action) } }
                            td { (event.host.as_deref().unwrap_or("—")) }
                            td class="num" { (event.pid.map_or("—".to_owned(), |pid| pid.to_string())) }
                            td { (event.summary) }
                        }
                    }
                }
            }
        }
    }
}
