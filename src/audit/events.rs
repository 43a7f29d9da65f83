//! The vocabulary of records: every record's `event` object ([`EventHeader`],
//! [`Outcome`]) and, for records that are not Jupyter messages, one [`Action`] per kind
//! of event and one type per event with the fields its record carries.
//!
//! Writers (the proxy, the collector) build these types and turn them into records with
//! [`AuditEvent::fields`]; the review tools match on [`Action`] and read the fields back
//! through the same types, so an action's name and its fields are spelled once.
//! `schema/audit-record.schema.json` stays the external contract: a test checks these
//! types against it. Proxy events put their fields under `jupyter`, the collector's
//! under `collector`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `event.action` of a record that is not a Jupyter message (those have the message's
/// `msg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The proxy started the kernel.
    SessionStart,
    /// The kernel exited.
    SessionEnd,
    /// The process that launched the proxy went away; the kernel is stopped.
    ParentExited,
    /// SIGINT passed on to the kernel.
    Interrupt,
    /// Another signal (SIGTERM, SIGHUP) passed on to the kernel.
    Signal,
    /// A request that could not be recorded first was not relayed (block policy).
    ExecutionRefused,
    /// A request that could not be recorded first was relayed (allow policy).
    AuditBypassed,
    /// A message the proxy did not relay.
    MessageRejected,
    /// Rejections past the rate limit, counted.
    RejectionsSuppressed,
    /// Records the proxy lost while the collector was away.
    AuditGap,
    /// The collector started.
    CollectorStart,
    /// The collector stopped.
    CollectorStop,
    /// A user exceeded a fairness limit of the collector.
    LimitExceeded,
    /// A record for a session that belongs to another process, refused.
    ForgedRecord,
    /// A record with fields its sender may not write, refused.
    RecordRefused,
    /// Refusals past the rate limit, counted.
    RefusalsSuppressed,
    /// PostgreSQL holds another trail for this store (a fork); forwarding stopped.
    ForwardConflict,
    /// A connection without the JupyterHub identity the collector requires, refused.
    IdentityRefused,
    /// A connection without a JupyterHub identity, accepted under its OS account.
    IdentityUnverified,
    /// A reviewer opened a page of the review console (or searched, or downloaded).
    ReviewAccess,
    /// A reviewer marked a session reviewed or flagged it, with a note.
    ReviewMark,
}

impl Action {
    pub const ALL: [Action; 21] = [
        Self::SessionStart,
        Self::SessionEnd,
        Self::ParentExited,
        Self::Interrupt,
        Self::Signal,
        Self::ExecutionRefused,
        Self::AuditBypassed,
        Self::MessageRejected,
        Self::RejectionsSuppressed,
        Self::AuditGap,
        Self::CollectorStart,
        Self::CollectorStop,
        Self::LimitExceeded,
        Self::ForgedRecord,
        Self::RecordRefused,
        Self::RefusalsSuppressed,
        Self::ForwardConflict,
        Self::IdentityRefused,
        Self::IdentityUnverified,
        Self::ReviewAccess,
        Self::ReviewMark,
    ];

    /// The name as `event.action` holds it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SessionStart => "session_start",
            Self::SessionEnd => "session_end",
            Self::ParentExited => "parent_exited",
            Self::Interrupt => "interrupt",
            Self::Signal => "signal",
            Self::ExecutionRefused => "execution_refused",
            Self::AuditBypassed => "audit_bypassed",
            Self::MessageRejected => "message_rejected",
            Self::RejectionsSuppressed => "rejections_suppressed",
            Self::AuditGap => "audit_gap",
            Self::CollectorStart => "collector_start",
            Self::CollectorStop => "collector_stop",
            Self::LimitExceeded => "limit_exceeded",
            Self::ForgedRecord => "forged_record",
            Self::RecordRefused => "record_refused",
            Self::RefusalsSuppressed => "refusals_suppressed",
            Self::ForwardConflict => "forward_conflict",
            Self::IdentityRefused => "identity_refused",
            Self::IdentityUnverified => "identity_unverified",
            Self::ReviewAccess => "review_access",
            Self::ReviewMark => "review_mark",
        }
    }

    /// The action named `name`; None for message types and anything unknown.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.as_str() == name)
    }

    /// Whether only the collector writes records of this action: a sender's record
    /// with one would read as the collector's word.
    pub const fn is_collectors(self) -> bool {
        matches!(
            self,
            Self::CollectorStart
                | Self::CollectorStop
                | Self::LimitExceeded
                | Self::ForgedRecord
                | Self::RecordRefused
                | Self::RefusalsSuppressed
                | Self::ForwardConflict
                | Self::IdentityRefused
                | Self::IdentityUnverified
        )
    }

    /// Whether records of this action are the review console's: written only by the
    /// OS accounts the collector names as the console's (`--console-user`), with their
    /// fields in the record's `review` object.
    pub const fn is_review(self) -> bool {
        matches!(self, Self::ReviewAccess | Self::ReviewMark)
    }

    /// The record's object that holds this action's own fields.
    pub const fn fields_object(self) -> &'static str {
        if self.is_collectors() {
            "collector"
        } else if self.is_review() {
            "review"
        } else {
            "jupyter"
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// `event.kind`: always `event` (ECS).
pub const EVENT_KIND: &str = "event";

/// `event.outcome` (ECS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    /// The outcome named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Success, Self::Failure]
            .into_iter()
            .find(|outcome| outcome.as_str() == name)
    }
}

/// A record's `event` object as its writer (the proxy, or the collector for its own
/// records) makes it; the store adds `sequence` and the collector `ingested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventHeader<'a> {
    /// An [`Action`], or a message's `msg_type`.
    pub action: &'a str,
    /// When the writer made the record (RFC 3339).
    pub created: String,
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

impl<'a> EventHeader<'a> {
    /// The header of a record of `action` made now.
    pub fn new(action: &'a str) -> Self {
        Self {
            action,
            created: super::now_rfc3339(),
            kind: EVENT_KIND,
            outcome: None,
        }
    }

    /// As a record holds it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// One event's record fields, and its action. Proxy events go into `jupyter` (besides
/// the session's context), the collector's into `collector`, the console's into
/// `review`.
pub trait AuditEvent: Serialize + DeserializeOwned {
    fn action(&self) -> Action;

    /// `event.outcome`; only refusals have one.
    fn outcome(&self) -> Option<Outcome> {
        None
    }

    /// The record's `event` object, made now.
    fn header(&self) -> EventHeader<'static> {
        EventHeader {
            outcome: self.outcome(),
            ..EventHeader::new(self.action().as_str())
        }
    }

    /// The record's fields (`jupyter`, `collector` or `review`).
    fn fields(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            // These types are structs of plain values: always an object.
            _ => Map::new(),
        }
    }

    /// Reads an event's fields back from a stored record's `jupyter` or `collector`
    /// object; fields it lacks (older records) take their defaults. None when a field
    /// has the wrong type: the record was not written by jupyter-audit.
    fn read(fields: &Value) -> Option<Self> {
        Self::deserialize(fields).ok()
    }
}

macro_rules! event {
    ($type:ty => $action:expr) => {
        impl AuditEvent for $type {
            fn action(&self) -> Action {
                $action
            }
        }
    };
    ($type:ty => $action:expr, $outcome:expr) => {
        impl AuditEvent for $type {
            fn action(&self) -> Action {
                $action
            }

            fn outcome(&self) -> Option<Outcome> {
                Some($outcome)
            }
        }
    };
}

/// `session_start`: what is known about a session when it starts. The environment
/// values are set by Jupyter (and could be set by the user): context, not identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionStart {
    /// JPY_SESSION_NAME: the notebook's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notebook_path: Option<String>,
    /// JUPYTERHUB_USER.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_user: Option<String>,
    /// JUPYTERHUB_SERVER_NAME.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_server_name: Option<String>,
    pub kernel_argv: Vec<String>,
    pub kernel_pid: u32,
    /// As the proxy reports it (`process.pid` is the verified one).
    pub proxy_pid: u32,
    pub proxy_version: String,
    pub connection_file: String,
}
event!(SessionStart => Action::SessionStart);

/// `session_end`: how the kernel ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionEnd {
    /// None when the kernel died of a signal.
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// The kernel was stopped because the process that launched the proxy went away.
    pub orphaned: bool,
}
event!(SessionEnd => Action::SessionEnd);

/// `parent_exited`: no fields besides the session's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentExited {}
event!(ParentExited => Action::ParentExited);

/// `interrupt` (SIGINT) or `signal` (the others): a signal passed on to the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalPassed {
    /// SIGINT, SIGTERM, SIGHUP.
    pub signal: String,
}

impl AuditEvent for SignalPassed {
    fn action(&self) -> Action {
        if self.signal == "SIGINT" {
            Action::Interrupt
        } else {
            Action::Signal
        }
    }
}

/// `execution_refused` or `audit_bypassed`: a request that had to be recorded before
/// it ran but could not be; refused (block policy) or relayed anyway (allow).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestUnrecorded {
    /// Relayed anyway: `audit_bypassed`.
    #[serde(skip)]
    pub bypassed: bool,
    pub msg_id: String,
    pub refused_msg_type: String,
    pub channel: String,
    pub reason: String,
}

impl AuditEvent for RequestUnrecorded {
    fn action(&self) -> Action {
        if self.bypassed {
            Action::AuditBypassed
        } else {
            Action::ExecutionRefused
        }
    }
}

/// On the records of rejected frontend messages: whose name `user.*` is.
pub const IDENTITY_NOTE: &str = "user.* is the account running this kernel (the proxy's owner), not the sender of the rejected messages; jupyter.sender (senders) is what the proxy could learn of the sender";

/// `message_rejected`: a message the proxy did not relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageRejected {
    pub channel: String,
    /// `frontend` or `kernel`.
    pub from: String,
    pub reason: String,
    /// Null when the header could not be read.
    pub msg_id: Option<String>,
    pub rejected_msg_type: Option<String>,
    /// The connection it came from, as far as the proxy knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Sender>,
    /// [`IDENTITY_NOTE`], on rejections of frontend messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_note: Option<String>,
}
event!(MessageRejected => Action::MessageRejected);

/// `rejections_suppressed`: rejections of one window past those recorded one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RejectionsSuppressed {
    pub channel: String,
    pub from: String,
    pub rejected_count: u64,
    /// `rejected_count` by reason.
    pub reasons: BTreeMap<String, u64>,
    pub first_rejected_at: String,
    pub last_rejected_at: String,
    pub reason: String,
    /// The first distinct connections they came from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<Sender>,
    /// They came from more connections than `senders` lists.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_senders: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_note: Option<String>,
}
event!(RejectionsSuppressed => Action::RejectionsSuppressed);

/// The sender of a rejected message: `jupyter.sender`, `jupyter.senders[]`, as the
/// transport describes it.
pub use crate::transport::SenderInfo as Sender;

/// `audit_gap`: records the proxy lost (queue full, collector away too long).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditGap {
    pub lost_records: u64,
    /// When the first of them was lost.
    pub gap_since: String,
    pub reason: String,
}
event!(AuditGap => Action::AuditGap);

/// `collector_start`: the store the collector opened and the limits in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectorStart {
    pub store: String,
    pub socket: String,
    /// The last sequence in the store when it was opened (0 for a new store).
    pub last_sequence: u64,
    pub store_created: bool,
    /// An incomplete last record that recovery cut off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torn_record: Option<TornRecord>,
    pub version: String,
    /// The fairness limits in force, as the config file names them.
    pub limits: Value,
    pub descriptor_limit: u64,
    /// The JupyterHub the collector asks who runs each kernel, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSettings>,
    /// The OS accounts whose connections are the review console's (the only writers
    /// of review records).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub console_users: Vec<String>,
}
event!(CollectorStart => Action::CollectorStart);

/// `collector.hub` of `collector_start`: how kernels are identified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HubSettings {
    pub api_url: String,
    /// `required` or `preferred`.
    pub identity: String,
    pub cache_max_age_secs: u64,
    pub client_certificate: bool,
}

/// `collector.torn_record` of `collector_start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TornRecord {
    pub segment: String,
    pub offset: u64,
    pub bytes: u64,
}

/// `collector_stop`: no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorStop {}
event!(CollectorStop => Action::CollectorStop);

/// `limit_exceeded`: what one user exceeded since the last such record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitExceeded {
    /// Which limit (`connections`, `storage_share`, …).
    pub limit: String,
    pub peer: LimitPeer,
    /// Connections closed or records refused.
    pub count: u64,
    /// Bytes of the frames cut or refused.
    pub bytes: u64,
    /// The limit's setting.
    pub setting: u64,
    pub first_at: String,
    pub last_at: String,
    pub reason: String,
}
event!(LimitExceeded => Action::LimitExceeded);

/// `collector.peer` of `limit_exceeded`: the user, from the peer credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitPeer {
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
}

/// What a refused record claimed to be (`collector.refused`), each value capped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefusedClaim {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    /// record_refused for its fields: the fields a sender may not write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

/// `forged_record`: a record for a session that belongs to another process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForgedRecord {
    pub reason: String,
    pub refused: RefusedClaim,
    pub session_owner: SessionOwner,
}
event!(ForgedRecord => Action::ForgedRecord, Outcome::Failure);

/// `collector.session_owner` of `forged_record`: the process the session belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionOwner {
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `record_refused`: a record with fields its sender may not write, or for a session
/// its sender may not open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordRefused {
    pub reason: String,
    pub refused: RefusedClaim,
}
event!(RecordRefused => Action::RecordRefused, Outcome::Failure);

/// `refusals_suppressed`: refusals of one connection past the rate limit, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefusalsSuppressed {
    pub suppressed_count: u64,
    /// `suppressed_count` by the action their record would have had.
    pub suppressed: BTreeMap<Action, u64>,
    pub first_refused_at: Option<String>,
    pub last_refused_at: Option<String>,
    pub reason: String,
}
event!(RefusalsSuppressed => Action::RefusalsSuppressed, Outcome::Failure);

/// `forward_conflict`: a row in PostgreSQL contradicts the store (the same store id
/// and sequence with another hash, or another public key): forwarding of this store
/// stopped until the collector is restarted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardConflict {
    pub store_id: String,
    /// The server, as configured (no password).
    pub target: String,
    /// `records`, `checkpoints` or `stores`.
    pub table: String,
    /// The sequence of the row (0 for `stores`).
    pub row_sequence: u64,
    /// What the store holds there: a hash (hex) or the public key.
    pub local: String,
    /// What PostgreSQL holds there (empty: nothing).
    pub remote: String,
    pub reason: String,
}
event!(ForwardConflict => Action::ForwardConflict, Outcome::Failure);

/// `identity_refused` or `identity_unverified`: a connection to a collector that asks
/// JupyterHub who each kernel belongs to, whose token did not establish a Hub user.
/// Stamped with the connection's OS account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentityUnattested {
    /// Refused (policy `required`): `identity_refused`.
    #[serde(skip)]
    pub refused: bool,
    /// `missing_token`, `token_rejected`, `not_a_user` or `hub_unreachable`.
    pub reason: String,
    pub detail: String,
    /// The collector's `hub_identity` policy.
    pub policy: String,
}

impl AuditEvent for IdentityUnattested {
    fn action(&self) -> Action {
        if self.refused {
            Action::IdentityRefused
        } else {
            Action::IdentityUnverified
        }
    }

    fn outcome(&self) -> Option<Outcome> {
        Some(Outcome::Failure)
    }
}

/// `review.reviewer` of the console's records: the Hub user the console's login
/// verified, and the console scopes their login held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewerFields {
    pub name: String,
    pub scopes: Vec<String>,
}

/// `review.view` of a `review_mark` record.
pub const MARK_VIEW: &str = "mark";

/// `review_access`: a reviewer looked at something in the review console. Recorded
/// before the console shows it; what was looked at is named by the fields its page has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewAccess {
    pub reviewer: ReviewerFields,
    /// `sessions`, `timeline`, `session`, `output`, `search`, `download`, `health` or
    /// `running`.
    pub view: String,
    /// The viewed session's `jupyter.session_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The timeline's user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The search text, or the sessions page's filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The shown output's `event.sequence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Whether outputs were shown or exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<bool>,
}
event!(ReviewAccess => Action::ReviewAccess, Outcome::Success);

/// A `review_access` refused (`event.outcome` failure): a signed-in Hub user asked for a
/// page without the console scope it needs. The fields are a view's; `reviewer.scopes`
/// are the console scopes the login held (none, or read without read-outputs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReviewDenied(pub ReviewAccess);
event!(ReviewDenied => Action::ReviewAccess, Outcome::Failure);

/// `review_mark`: a reviewer marked a session reviewed or flagged it, with a note.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewMark {
    pub reviewer: ReviewerFields,
    /// Always [`MARK_VIEW`].
    pub view: String,
    pub session_id: String,
    /// `reviewed` or `flagged`.
    pub mark: String,
    pub note: String,
}
event!(ReviewMark => Action::ReviewMark, Outcome::Success);

#[cfg(test)]
mod tests;
