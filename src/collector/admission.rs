//! What the collector lets into the store from one connection: records that hold only
//! sender fields ([`fields`](super::fields)) for a session the sending process owns
//! ([`sessions`](super::sessions)). Every refusal is answered (not retried) and, within
//! a rate limit per connection, recorded under the sender's verified identity.
//!
//! The review console's connection ([`SenderKind::Console`]) goes through the same gate
//! with its own field rules: its records are review records only, and their
//! `jupyter.session_id` is the console process's own session (one per `serve` process,
//! made by its trail writer), bound to that process as a kernel's session is bound to
//! its proxy. Such a session has no `session_start` or `session_end`: the review tools
//! do not count review records as a kernel session's.

use std::collections::VecDeque;
use std::time::Instant;

use super::fields::{self, FieldRefusal, SenderKind, capped};
use super::incoming::SenderRecord;
use super::refusals::{RefusalLimiter, refusal_record, stamp_collector_record};
use super::server::PeerIdentity;
use super::sessions::{Claim, Owner, SessionTable};
use crate::audit::Record;
use crate::audit::events::{AuditEvent, ForgedRecord, RecordRefused, RefusedClaim, SessionOwner};
use crate::store::{StoreError, StoreHandle};

/// Sessions one connection remembers as its own (a proxy writes one).
const GRANTED_REMEMBERED: usize = 8;

/// The collector's decision about one record.
#[derive(Debug)]
pub enum Verdict {
    /// Store it (stamp it first).
    Accept(SenderRecord),
    /// Answer with this error; `InvalidRecord` is final, others may be retried.
    Refuse(StoreError),
}

/// One connection's gate to the store.
pub struct Admission {
    identity: PeerIdentity,
    kind: SenderKind,
    owner: Owner,
    host: String,
    store: StoreHandle,
    sessions: SessionTable,
    limiter: RefusalLimiter,
    /// Sessions granted to this connection already (on disk).
    granted: VecDeque<String>,
}

impl Admission {
    /// The gate of a kernel's connection.
    pub async fn new(
        identity: &PeerIdentity,
        host: &str,
        store: &StoreHandle,
        sessions: &SessionTable,
    ) -> Self {
        Self::of_kind(identity, SenderKind::Kernel, host, store, sessions).await
    }

    /// The gate of a connection of `kind` (the review console's, or a kernel's).
    pub async fn of_kind(
        identity: &PeerIdentity,
        kind: SenderKind,
        host: &str,
        store: &StoreHandle,
        sessions: &SessionTable,
    ) -> Self {
        Admission {
            owner: Owner::of(identity).await,
            identity: identity.clone(),
            kind,
            host: host.to_owned(),
            store: store.clone(),
            sessions: sessions.clone(),
            limiter: RefusalLimiter::default(),
            granted: VecDeque::new(),
        }
    }

    /// Decides about `record`; a refusal is recorded (rate limited) before this returns.
    pub async fn admit(&mut self, record: SenderRecord) -> Verdict {
        let session = match fields::check_as(&record, self.kind) {
            // The common case, one record after another of the connection's session.
            Ok(session) if self.granted.iter().any(|granted| *granted == session) => {
                return Verdict::Accept(record);
            }
            Ok(session) => session,
            Err(FieldRefusal { reason, fields }) => {
                let refusal = RecordRefused {
                    reason: reason.clone(),
                    refused: RefusedClaim {
                        fields: Some(fields),
                        ..claimed(&record)
                    },
                };
                self.record_refusal(&refusal).await;
                return refuse(format!("record refused: {reason}"));
            }
        };
        match self.sessions.claim(&session, self.owner).await {
            Claim::Granted => {
                if self.granted.len() == GRANTED_REMEMBERED {
                    self.granted.pop_front();
                }
                self.granted.push_back(session);
                Verdict::Accept(record)
            }
            Claim::Forged { owner } => {
                let reason = format!(
                    "session {} belongs to another process; a session's records come from its proxy",
                    capped(&session)
                );
                let forged = ForgedRecord {
                    reason: reason.clone(),
                    refused: claimed(&record),
                    session_owner: SessionOwner {
                        user_id: owner.uid.to_string(),
                        pid: (owner.pid != 0).then_some(owner.pid),
                    },
                };
                self.record_refusal(&forged).await;
                tracing::warn!(
                    uid = self.identity.uid,
                    pid = ?self.identity.pid,
                    owner_uid = owner.uid,
                    owner_pid = owner.pid,
                    "record for a session of another process refused"
                );
                refuse(format!("record refused: {reason}"))
            }
            Claim::Refused(reason) => {
                let refusal = RecordRefused {
                    reason: reason.clone(),
                    refused: claimed(&record),
                };
                self.record_refusal(&refusal).await;
                refuse(format!("record refused: {reason}"))
            }
            Claim::Unavailable(error) => Verdict::Refuse(error),
        }
    }

    /// At the end of the connection: the count of refusals not recorded one by one.
    pub async fn finish(&mut self) {
        if let Some(summary) = self.limiter.summary() {
            self.store_record(summary).await;
        }
    }

    async fn record_refusal(&mut self, refusal: &impl AuditEvent) {
        let (own, summary) = self.limiter.refused(refusal.action(), Instant::now());
        if let Some(summary) = summary {
            self.store_record(summary).await;
        }
        if own {
            self.store_record(refusal_record(refusal)).await;
        }
    }

    /// Stamps a record of the collector's with the sender's identity and queues it.
    async fn store_record(&self, record: Record) {
        let stamped = match stamp_collector_record(record, &self.identity, &self.host) {
            Ok(stamped) => stamped,
            Err(reason) => {
                tracing::error!(%reason, "cannot stamp a refusal record");
                return;
            }
        };
        let stored = self.store.submit(stamped, false).await;
        tokio::spawn(async move {
            if let Ok(Err(error)) = stored.await {
                tracing::error!(%error, "cannot store a refusal record");
            }
        });
    }
}

fn refuse(error: String) -> Verdict {
    Verdict::Refuse(StoreError::InvalidRecord(error))
}

/// What a refused record claimed to be: its session, action and message (capped).
fn claimed(record: &SenderRecord) -> RefusedClaim {
    let jupyter = |key: &str| record.jupyter_str(key).map(|text| capped(&text));
    RefusedClaim {
        session_id: jupyter("session_id"),
        action: record.event_str("action").map(capped),
        msg_id: jupyter("msg_id"),
        fields: None,
    }
}
