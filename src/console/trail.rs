//! The console's own audit trail: every page a reviewer opens, every search, download
//! and mark is a record (`review_access`, `review_mark`) written through the collector
//! socket like any other record, and written before the page is shown (a view that
//! cannot be recorded is not shown).
//!
//! One [`ReviewTrail`] per `serve` process: one connection to the collector (the
//! proxy's client, [`AuditClient`], which reconnects and resends), shared by every page
//! view. Each record is urgent and waits for the collector's acknowledgement that it is
//! on disk, within [`PATIENCE`]; at most [`MAX_WAITING`] views wait at once (more wait
//! for a place, within the same bound). A dead collector is an error within the bound,
//! never a hang.
//!
//! The records carry `jupyter.session_id` = this process's console session (a new id
//! at every start), which the collector binds to this process as it binds a kernel's
//! session to its proxy; the collector takes review records only from the OS accounts
//! it names with `--console-user`. A view refused for want of the collector is still
//! queued and stored once the collector is back, marked `jupyter.write_ahead_failed`
//! (the reviewer asked for it and was not shown it). The console never presents its
//! Hub token to the collector (it is not a kernel; its identity is its OS account).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::auth::{SCOPE_READ, SCOPE_READ_OUTPUTS};
use crate::audit::events::{MARK_VIEW, ReviewAccess, ReviewDenied, ReviewMark, ReviewerFields};
use crate::audit::{Observation, Record, SessionContext, review_record};
use crate::collector::{AuditClient, Recorder};

/// The longest a page waits for its record to be on disk (a place in the queue, the
/// connection, the acknowledgement, together).
pub const PATIENCE: Duration = Duration::from_secs(4);
/// Views waiting for their acknowledgement at once; well under the client's queue, so
/// that no record is ever dropped for want of room in it.
pub const MAX_WAITING: usize = 256;
/// One record per user and refused page within this time; the refusals in between are
/// answered (403) without a record.
pub const DENIAL_EVERY: Duration = Duration::from_secs(60);
/// Users and pages whose last refusal is remembered; past it the oldest are forgotten
/// (at worst a user's refusal is recorded once more than the rate allows).
const MAX_DENIALS_REMEMBERED: usize = 4096;

/// Who is looking: the Hub user the console's login verified, and the console scopes
/// their token held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub name: String,
    pub outputs_visible: bool,
    /// The console scopes the login held as the Hub granted them, filters included
    /// (`custom:jupyter-audit:read!group=research`); empty: read, and read-outputs when
    /// outputs are visible, unfiltered.
    pub scopes: Vec<String>,
}

impl Reviewer {
    /// `review.reviewer`: the name and the console scopes, so that the record shows a
    /// filtered grant as filtered.
    fn fields(&self) -> ReviewerFields {
        if !self.scopes.is_empty() {
            return ReviewerFields {
                name: self.name.clone(),
                scopes: self.scopes.clone(),
            };
        }
        let mut scopes = vec![SCOPE_READ.to_owned()];
        if self.outputs_visible {
            scopes.push(SCOPE_READ_OUTPUTS.to_owned());
        }
        ReviewerFields {
            name: self.name.clone(),
            scopes,
        }
    }
}

/// What a reviewer looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewed {
    /// The sessions list, with its filters as the query string showed them.
    Sessions { filters: String },
    /// One user's timeline.
    Timeline { user: String },
    /// One session as it ran (outputs shown or not).
    Session { session_id: String, outputs: bool },
    /// One output shown in its sandboxed frame (HTML) or as an image.
    Output { session_id: String, sequence: u64 },
    /// A code search and the page of hits.
    Search { query: String },
    /// A session downloaded as .ipynb with its proof.
    Download { session_id: String, outputs: bool },
    /// The store's health page.
    Health,
    /// The sessions running now.
    Running,
}

impl Viewed {
    /// The record's `review` fields for `reviewer`.
    fn event(self, reviewer: &Reviewer) -> ReviewAccess {
        let access = |view: &str| ReviewAccess {
            reviewer: reviewer.fields(),
            view: view.to_owned(),
            ..ReviewAccess::default()
        };
        match self {
            Self::Sessions { filters } => ReviewAccess {
                query: Some(filters),
                ..access("sessions")
            },
            Self::Timeline { user } => ReviewAccess {
                user: Some(user),
                ..access("timeline")
            },
            Self::Session {
                session_id,
                outputs,
            } => ReviewAccess {
                session_id: Some(session_id),
                outputs: Some(outputs),
                ..access("session")
            },
            Self::Output {
                session_id,
                sequence,
            } => ReviewAccess {
                session_id: Some(session_id),
                sequence: Some(sequence),
                outputs: Some(true),
                ..access("output")
            },
            Self::Search { query } => ReviewAccess {
                query: Some(query),
                ..access("search")
            },
            Self::Download {
                session_id,
                outputs,
            } => ReviewAccess {
                session_id: Some(session_id),
                outputs: Some(outputs),
                ..access("download")
            },
            Self::Health => access("health"),
            Self::Running => access("running"),
        }
    }
}

impl Viewed {
    /// The record of `user` refused this page; `scopes` are the console scopes their
    /// login held.
    fn denial(self, user: &str, scopes: &[String]) -> ReviewDenied {
        let nobody = Reviewer {
            name: user.to_owned(),
            outputs_visible: false,
            scopes: Vec::new(),
        };
        let mut access = self.event(&nobody);
        access.reviewer.scopes = scopes.to_vec();
        ReviewDenied(access)
    }
}

/// A reviewer's mark on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Reviewed,
    Flagged,
}

impl Mark {
    /// `review.mark`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Reviewed => "reviewed",
            Self::Flagged => "flagged",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The collector is down, refuses, or did not acknowledge in time: the view is not
    /// shown (the page says so).
    #[error("the audit log is unavailable: {0}")]
    Unavailable(String),
}

/// The writer of the console's records (one per `serve` process; clones share it).
/// [`Default`] is a trail with no collector: every view is refused.
#[derive(Debug, Clone, Default)]
pub struct ReviewTrail {
    writer: Option<Arc<Writer>>,
    /// Handler tests: records kept in memory instead of a collector.
    #[cfg(test)]
    kept: Option<Arc<std::sync::Mutex<Vec<Record>>>>,
    /// When each (user, page) refusal was last recorded.
    denials: Arc<Mutex<HashMap<(String, String), Instant>>>,
}

#[derive(Debug)]
struct Writer {
    client: AuditClient,
    /// This process's console session (`jupyter.session_id` of its records).
    session_id: String,
    waiting: Semaphore,
}

/// The console submits records only; it relays no messages.
struct NoMessages;

impl Recorder for NoMessages {
    fn observed(&mut self, _: Observation) -> Option<Record> {
        None
    }

    fn write_ahead(&mut self, _: Observation) -> Record {
        Record::new()
    }
}

impl ReviewTrail {
    /// A trail through the collector listening on `socket`. Connects in the
    /// background (and again whenever the connection breaks); must be called inside
    /// the runtime.
    pub fn connect(socket: PathBuf) -> Self {
        let session_id = format!("console-{}", uuid::Uuid::new_v4());
        let context = SessionContext {
            session_id: session_id.clone(),
            ..SessionContext::default()
        };
        // No Hub token: the collector knows the console by its OS account.
        let (client, _task) = AuditClient::spawn(socket, context, Box::new(NoMessages));
        tracing::info!(%session_id, "review trail: the console's views are recorded under this session");
        Self {
            writer: Some(Arc::new(Writer {
                client,
                session_id,
                waiting: Semaphore::new(MAX_WAITING),
            })),
            #[cfg(test)]
            kept: None,
            denials: Arc::default(),
        }
    }

    /// For handler tests: a trail that keeps its records in memory, and those records.
    #[cfg(test)]
    pub(crate) fn kept_in_memory() -> (Self, Arc<std::sync::Mutex<Vec<Record>>>) {
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let trail = Self {
            writer: None,
            kept: Some(kept.clone()),
            denials: Arc::default(),
        };
        (trail, kept)
    }

    /// For handler tests: the records a [`Self::kept_in_memory`] trail holds.
    #[cfg(test)]
    pub(crate) fn kept_records(&self) -> Vec<Record> {
        self.kept
            .as_ref()
            .and_then(|kept| kept.lock().ok().map(|records| records.clone()))
            .unwrap_or_default()
    }

    /// The console session its records carry, if it has a collector.
    pub fn session_id(&self) -> Option<&str> {
        self.writer
            .as_deref()
            .map(|writer| writer.session_id.as_str())
    }

    /// Records that `reviewer` viewed `viewed`; returns once the record is on disk.
    pub async fn viewed(&self, reviewer: &Reviewer, viewed: Viewed) -> Result<(), TrailError> {
        self.write(|session| review_record(session, &viewed.event(reviewer)))
            .await
    }

    /// Records that the signed-in Hub `user`, holding the console `scopes` listed, was
    /// refused `viewed` (a 403). Returns whether a record was written: a refusal of the
    /// same user and page within [`DENIAL_EVERY`] of the last recorded one is not.
    pub async fn denied(
        &self,
        user: &str,
        scopes: &[String],
        viewed: Viewed,
    ) -> Result<bool, TrailError> {
        let event = viewed.denial(user, scopes);
        let key = (user.to_owned(), event.0.view.clone());
        if !self.first_denial_within_rate(&key) {
            return Ok(false);
        }
        let written = self.write(|session| review_record(session, &event)).await;
        if written.is_err() {
            // Not on the record: the next refusal tries again.
            if let Ok(mut denials) = self.denials.lock() {
                denials.remove(&key);
            }
        }
        written.map(|()| true)
    }

    /// Whether `key` was not recorded within [`DENIAL_EVERY`]; if so, notes it now.
    fn first_denial_within_rate(&self, key: &(String, String)) -> bool {
        let Ok(mut denials) = self.denials.lock() else {
            return true;
        };
        let now = Instant::now();
        if denials
            .get(key)
            .is_some_and(|last| now.duration_since(*last) < DENIAL_EVERY)
        {
            return false;
        }
        if denials.len() >= MAX_DENIALS_REMEMBERED {
            denials.retain(|_, last| now.duration_since(*last) < DENIAL_EVERY);
            if denials.len() >= MAX_DENIALS_REMEMBERED {
                denials.clear();
            }
        }
        denials.insert(key.clone(), now);
        true
    }

    /// Records `reviewer`'s mark on a session with a note; returns once it is on disk.
    pub async fn mark(
        &self,
        reviewer: &Reviewer,
        session_id: &str,
        mark: Mark,
        note: &str,
    ) -> Result<(), TrailError> {
        let event = ReviewMark {
            reviewer: reviewer.fields(),
            view: MARK_VIEW.to_owned(),
            session_id: session_id.to_owned(),
            mark: mark.as_str().to_owned(),
            note: note.to_owned(),
        };
        self.write(|session| review_record(session, &event)).await
    }

    async fn write(&self, record: impl FnOnce(&str) -> Record) -> Result<(), TrailError> {
        #[cfg(test)]
        if let Some(kept) = &self.kept {
            kept.lock()
                .map_err(|_| TrailError::Unavailable("poisoned".into()))?
                .push(record("console-test"));
            return Ok(());
        }
        let Some(writer) = &self.writer else {
            return Err(TrailError::Unavailable(
                "the console has no collector to record views to".into(),
            ));
        };
        let record = record(&writer.session_id);
        let stored = async {
            let _place = writer
                .waiting
                .acquire()
                .await
                .map_err(|_| TrailError::Unavailable("the console is stopping".into()))?;
            writer
                .client
                .submit_durable(record)
                .wait(PATIENCE)
                .await
                .map_err(|error| TrailError::Unavailable(error.to_string()))
        };
        match tokio::time::timeout(PATIENCE, stored).await {
            Ok(Ok(_sequence)) => Ok(()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "a view could not be recorded; it is not shown");
                Err(error)
            }
            Err(_) => {
                tracing::warn!("a view was not recorded in time; it is not shown");
                Err(TrailError::Unavailable(format!(
                    "the collector did not confirm the record within {PATIENCE:?}"
                )))
            }
        }
    }
}
