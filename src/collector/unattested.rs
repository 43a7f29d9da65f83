//! The record of a kernel connection that JupyterHub did not vouch for
//! (`identity_refused`, `identity_unverified`), once per process and reason in a while:
//! a refused kernel reconnects every few seconds, and each attempt need not be a record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hub::{HubPolicy, Unverified, UnverifiedReason};
use super::refusals::{refusal_record, stamp_collector_record};
use super::server::PeerIdentity;
use crate::audit::events::IdentityUnattested;
use crate::store::StoreHandle;
use crate::sync::lock;

/// `identity_refused` or `identity_unverified` for a connection without a Hub identity.
pub(super) fn identity_event(
    policy: HubPolicy,
    unverified: &Unverified,
    refused: bool,
) -> IdentityUnattested {
    IdentityUnattested {
        refused,
        reason: unverified.reason.as_str().to_owned(),
        detail: unverified.detail.clone(),
        policy: policy.name().to_owned(),
    }
}

/// Stores a record of the collector's about a connection, under its OS identity, and
/// waits until it is on disk (the connection may be closed right after).
pub(super) async fn store_identity_record(
    store: &StoreHandle,
    identity: &PeerIdentity,
    host: &str,
    event: &IdentityUnattested,
) {
    let stamped = match stamp_collector_record(refusal_record(event), identity, host) {
        Ok(stamped) => stamped,
        Err(reason) => {
            tracing::error!(%reason, "cannot stamp an identity record");
            return;
        }
    };
    match store.submit(stamped, true).await.await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(%error, "cannot store an identity record"),
        Err(_) => tracing::error!("the store stopped before an identity record was stored"),
    }
}

/// Which processes' missing Hub identity is on the record already: a kernel refused
/// reconnects every few seconds, and each attempt need not be a record. One record per
/// process and reason per [`IDENTITY_NOTE_INTERVAL`].
#[derive(Debug, Clone, Default)]
pub(super) struct IdentityNotes(Arc<Mutex<HashMap<NoteKey, Instant>>>);

/// A process (uid, pid) and why it has no Hub identity.
type NoteKey = (u32, Option<i32>, UnverifiedReason);

/// How often one process's missing Hub identity is recorded again.
const IDENTITY_NOTE_INTERVAL: Duration = Duration::from_secs(600);
/// Processes remembered; past this the memory is cleared (and they are recorded again).
const IDENTITY_NOTES: usize = 4096;

impl IdentityNotes {
    pub(super) fn worth_recording(
        &self,
        identity: &PeerIdentity,
        reason: UnverifiedReason,
    ) -> bool {
        let now = Instant::now();
        let mut notes = lock(&self.0);
        let key = (identity.uid, identity.pid, reason);
        if notes
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < IDENTITY_NOTE_INTERVAL)
        {
            return false;
        }
        if notes.len() >= IDENTITY_NOTES {
            notes.clear();
        }
        notes.insert(key, now);
        true
    }
}
