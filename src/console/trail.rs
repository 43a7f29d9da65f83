//! The console's own audit trail: every page a reviewer opens, every search, download
//! and mark is a record (`review_access`, `review_mark`) written through the collector
//! socket like any other record, and written before the page is shown (a view that
//! cannot be recorded is not shown).
//!
//! INTERFACE STUB (issue 14 in progress): the pages call these; the writer through the
//! collector socket replaces the bodies. Not done until then.

/// Who is looking: the Hub user the console's login verified, and the console scopes
/// their token held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub name: String,
    pub outputs_visible: bool,
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

/// A reviewer's mark on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Reviewed,
    Flagged,
}

#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The collector is down, refuses, or did not acknowledge in time: the view is not
    /// shown (the page says so).
    #[error("the audit log is unavailable: {0}")]
    Unavailable(String),
}

/// The writer of the console's records (one per `serve` process).
#[derive(Debug, Clone, Default)]
pub struct ReviewTrail {}

impl ReviewTrail {
    /// Records that `reviewer` viewed `viewed`; returns once the record is on disk.
    pub async fn viewed(&self, reviewer: &Reviewer, viewed: Viewed) -> Result<(), TrailError> {
        let _ = (reviewer, viewed);
        Ok(())
    }

    /// Records `reviewer`'s mark on a session with a note; returns once it is on disk.
    pub async fn mark(
        &self,
        reviewer: &Reviewer,
        session_id: &str,
        mark: Mark,
        note: &str,
    ) -> Result<(), TrailError> {
        let _ = (reviewer, session_id, mark, note);
        Ok(())
    }
}
