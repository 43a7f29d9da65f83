//! Rejected messages on the record, without letting a flood of them flood the store.
//!
//! Per channel and side, the first [`RECORDED_PER_WINDOW`] rejections of a window of
//! [`WINDOW`] get a `message_rejected` record (and a WARN line) each; the rest are
//! counted, and the window closes with one `rejections_suppressed` record that says how
//! many there were, why, and from which connections (the first [`SENDERS_KEPT`]). Every
//! rejection is accounted for, and a hostile frontend costs the store a few records per
//! window however fast it sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Relay;
use crate::audit::events;
use crate::audit::{Direction, now_rfc3339};
use crate::connection::Channel;
use crate::transport::{Oversized, Peer, SenderInfo};
use crate::wire::{WireError, WireMessage};

/// How long a window of rejections lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(5);
/// How many rejections per channel and side get a record of their own in one window.
pub(crate) const RECORDED_PER_WINDOW: u32 = 10;
/// How many distinct senders a summary names.
pub(crate) const SENDERS_KEPT: usize = 8;

/// A short, stable name of why a message was rejected: the key of a summary's counts
/// (the error's text carries sizes and parser messages, which would make every key new).
pub(crate) fn reason_kind(reason: &RejectReason) -> &'static str {
    let error = match reason {
        RejectReason::Wire(error) => error,
        RejectReason::UnreadableContent { .. } => return "unreadable_content",
    };
    match error {
        WireError::Empty => "empty",
        WireError::MissingDelimiter => "missing_delimiter",
        WireError::TooFewFrames(_) => "too_few_frames",
        WireError::Oversized { .. } => "oversized",
        WireError::BadHeader(_) => "bad_header",
        WireError::MissingSignature => "missing_signature",
        WireError::BadSignature => "bad_signature",
        WireError::Replayed => "replayed",
        WireError::NonCanonicalSignature => "non_canonical_signature",
        WireError::UnsupportedScheme(_) => "unsupported_scheme",
    }
}

/// Rejections of one window past the individually recorded ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub channel: Channel,
    pub from: Direction,
    pub count: u64,
    pub reasons: BTreeMap<&'static str, u64>,
    /// When the first and the last of them arrived (proxy clock).
    pub first_at: String,
    pub last_at: String,
    /// The first distinct connections they came from, when known.
    pub senders: Vec<Arc<Peer>>,
    /// They came from more connections than `senders` names.
    pub more_senders: bool,
}

impl Suppressed {
    /// The `rejections_suppressed` event; `senders` describes `self.senders`.
    pub(crate) fn event(&self, senders: &[SenderInfo]) -> events::RejectionsSuppressed {
        events::RejectionsSuppressed {
            channel: self.channel.name().to_owned(),
            from: self.from.name().to_owned(),
            rejected_count: self.count,
            reasons: self
                .reasons
                .iter()
                .map(|(kind, count)| ((*kind).to_owned(), *count))
                .collect(),
            first_rejected_at: self.first_at.clone(),
            last_rejected_at: self.last_at.clone(),
            reason: format!(
                "more than {RECORDED_PER_WINDOW} messages rejected within {} s: counted, not recorded one by one",
                WINDOW.as_secs()
            ),
            senders: senders.to_vec(),
            more_senders: self.more_senders,
            identity_note: None,
        }
    }

    pub(crate) fn log(&self, senders: &[SenderInfo]) {
        let mut named: Vec<String> = senders.iter().map(SenderInfo::to_string).collect();
        if self.more_senders {
            named.push("…".into());
        }
        tracing::warn!(
            channel = %self.channel,
            from = self.from.name(),
            count = self.count,
            reasons = ?self.reasons,
            senders = %named.join(", "),
            "more messages rejected (counted, not logged one by one)"
        );
    }
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    recorded: u32,
    suppressed: Option<Suppressed>,
}

/// Decides which rejections are recorded one by one; shared by all relays.
#[derive(Debug, Default)]
pub(crate) struct RejectionLimiter {
    windows: Mutex<HashMap<(Channel, Direction), Window>>,
}

/// What to do with one rejection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Record (and log) this rejection on its own.
    pub record: bool,
    /// The summary of the window that this rejection closed, to record first.
    pub closed: Option<Suppressed>,
}

impl RejectionLimiter {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Channel, Direction), Window>> {
        crate::sync::lock(&self.windows)
    }

    /// Counts one rejection at `now`, of a message from `sender` when known.
    pub(crate) fn admit(
        &self,
        channel: Channel,
        from: Direction,
        reason: &'static str,
        sender: Option<&Arc<Peer>>,
        now: Instant,
    ) -> Verdict {
        let mut windows = self.lock();
        let window = windows.entry((channel, from)).or_insert(Window {
            opened: now,
            recorded: 0,
            suppressed: None,
        });
        let mut closed = None;
        if now.duration_since(window.opened) >= WINDOW {
            closed = window.suppressed.take();
            window.opened = now;
            window.recorded = 0;
        }
        if window.recorded < RECORDED_PER_WINDOW {
            window.recorded += 1;
            return Verdict {
                record: true,
                closed,
            };
        }
        let stamp = now_rfc3339();
        let suppressed = window.suppressed.get_or_insert_with(|| Suppressed {
            channel,
            from,
            count: 0,
            reasons: BTreeMap::new(),
            first_at: stamp.clone(),
            last_at: stamp.clone(),
            senders: Vec::new(),
            more_senders: false,
        });
        if let Some(sender) = sender
            && !suppressed.senders.contains(sender)
        {
            if suppressed.senders.len() < SENDERS_KEPT {
                suppressed.senders.push(Arc::clone(sender));
            } else {
                suppressed.more_senders = true;
            }
        }
        suppressed.count += 1;
        *suppressed.reasons.entry(reason).or_default() += 1;
        suppressed.last_at = stamp;
        Verdict {
            record: false,
            closed,
        }
    }

    /// Closes the windows that are over at `now`; returns their summaries.
    pub(crate) fn expired(&self, now: Instant) -> Vec<Suppressed> {
        let mut windows = self.lock();
        let mut closed = Vec::new();
        windows.retain(|_, window| {
            if now.duration_since(window.opened) < WINDOW {
                return true;
            }
            closed.extend(window.suppressed.take());
            false
        });
        closed
    }

    /// Closes every window (the session ends); returns their summaries.
    pub(crate) fn drain(&self) -> Vec<Suppressed> {
        let mut windows = self.lock();
        windows
            .drain()
            .filter_map(|(_, window)| window.suppressed)
            .collect()
    }
}

/// Why a message is not relayed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum RejectReason {
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A part of a request that the audit cannot parse: the kernel's own parser may
    /// still read code from it (Python's json accepts NaN, lone surrogates, deeper
    /// nesting, and Jupyter decodes bad UTF-8 as U+FFFD), which would run code that is
    /// not on the record.
    #[error(
        "{part} is not JSON the audit can read ({error}); not relayed, it could run code off the record"
    )]
    UnreadableContent { part: &'static str, error: String },
}

/// A message that is not relayed, with what is known about it for the diagnostic.
#[derive(Debug)]
pub(super) struct Rejection {
    pub from: Direction,
    pub error: RejectReason,
    pub msg_id: Option<String>,
    pub msg_type: Option<String>,
    /// The frontend connection it came from, when the router listed it.
    pub sender: Option<Arc<Peer>>,
}

impl Rejection {
    pub(super) fn new(
        from: Direction,
        error: impl Into<RejectReason>,
        message: Option<&WireMessage>,
    ) -> Self {
        // Best effort: the header of a rejected message is untrusted, but its msg_id
        // is what lets someone find the message in the frontend's own logs.
        let header = message.and_then(|message| message.header().ok());
        Self {
            from,
            error: error.into(),
            msg_id: header.as_ref().map(|header| header.msg_id.clone()),
            msg_type: header.map(|header| header.msg_type),
            sender: None,
        }
    }

    /// Logs the rejection and puts it on the record, within the rate limit: past it,
    /// the rejection is counted in the window's `rejections_suppressed` record instead.
    /// Only a rejection on the record waits for what is known of its sender.
    pub(super) async fn report(&self, channel: Channel, relay: &Relay) {
        let verdict = relay.rejections.admit(
            channel,
            self.from,
            reason_kind(&self.error),
            self.sender.as_ref(),
            Instant::now(),
        );
        if let Some(closed) = verdict.closed {
            record_suppressed(&closed, relay).await;
        }
        if !verdict.record {
            tracing::debug!(%channel, from = self.from.name(), reason = %self.error, "message rejected (counted)");
            return;
        }
        let sender = match &self.sender {
            Some(peer) => Some(peer.describe().await),
            None => None,
        };
        self.log(channel, sender.as_ref());
        if let Some(auditor) = &relay.auditor {
            auditor.event(&events::MessageRejected {
                channel: channel.name().to_owned(),
                from: self.from.name().to_owned(),
                reason: self.error.to_string(),
                msg_id: self.msg_id.clone(),
                rejected_msg_type: self.msg_type.clone(),
                sender: sender.clone(),
                identity_note: identity_note(self.from),
            });
        }
    }

    pub(super) fn log(&self, channel: Channel, sender: Option<&SenderInfo>) {
        tracing::warn!(
            %channel,
            from = self.from.name(),
            sender = %sender.map_or_else(|| "unknown".to_owned(), SenderInfo::to_string),
            reason = %self.error,
            msg_id = self.msg_id.as_deref().unwrap_or("unknown"),
            msg_type = self.msg_type.as_deref().unwrap_or("unknown"),
            "message rejected"
        );
    }
}

/// Logs and records the summary of a closed window of rejections.
pub(super) async fn record_suppressed(summary: &Suppressed, relay: &Relay) {
    let mut senders = Vec::with_capacity(summary.senders.len());
    for peer in &summary.senders {
        senders.push(peer.describe().await);
    }
    summary.log(&senders);
    if let Some(auditor) = &relay.auditor {
        let mut event = summary.event(&senders);
        event.identity_note = identity_note(summary.from);
        auditor.event(&event);
    }
}

/// Records of rejected frontend messages say whose name `user.*` is.
fn identity_note(from: Direction) -> Option<String> {
    (from == Direction::FromFrontend).then(|| events::IDENTITY_NOTE.to_owned())
}

/// Reports messages the frontend server skipped for their size, and closes windows of
/// rate-limited rejections once they are over, so their counts reach the record while
/// the session runs.
pub(super) fn spawn_reports(
    mut oversized: mpsc::Receiver<Oversized>,
    relay: Arc<Relay>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(WINDOW);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            tokio::select! {
                notice = oversized.recv(), if open => {
                    let Some(notice) = notice else {
                        open = false;
                        continue;
                    };
                    Rejection {
                        from: Direction::FromFrontend,
                        error: WireError::Oversized {
                            size: usize::try_from(notice.size).unwrap_or(usize::MAX),
                            limit: notice.limit,
                        }
                        .into(),
                        msg_id: notice.msg_id,
                        msg_type: notice.msg_type,
                        sender: relay.peers.find(notice.channel, &notice.routing_id),
                    }
                    .report(notice.channel, &relay)
                    .await;
                }
                _ = ticks.tick() => {
                    for summary in relay.rejections.expired(Instant::now()) {
                        record_suppressed(&summary, &relay).await;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Endpoint, PeerDirectory};

    #[test]
    fn the_first_rejections_are_recorded_the_rest_counted_and_summed_up() {
        let limiter = RejectionLimiter::default();
        let start = Instant::now();
        let mut recorded = 0;
        for i in 0..1000u32 {
            let reason = if i % 2 == 0 {
                "bad_signature"
            } else {
                "missing_delimiter"
            };
            let verdict =
                limiter.admit(Channel::Shell, Direction::FromFrontend, reason, None, start);
            assert_eq!(verdict.closed, None);
            recorded += u32::from(verdict.record);
        }
        assert_eq!(recorded, RECORDED_PER_WINDOW);
        // Another channel has a window of its own.
        assert!(
            limiter
                .admit(
                    Channel::Control,
                    Direction::FromFrontend,
                    "empty",
                    None,
                    start
                )
                .record
        );
        assert!(limiter.expired(start).is_empty(), "the window is not over");
        let summaries = limiter.expired(start + WINDOW);
        assert_eq!(summaries.len(), 1, "control had nothing suppressed");
        let summary = &summaries[0];
        assert_eq!(summary.channel, Channel::Shell);
        assert_eq!(summary.count, 1000 - u64::from(RECORDED_PER_WINDOW));
        assert_eq!(summary.reasons.values().sum::<u64>(), summary.count);
        assert_eq!(summary.reasons["bad_signature"], 495);
        // A new window records again.
        assert!(
            limiter
                .admit(
                    Channel::Shell,
                    Direction::FromFrontend,
                    "empty",
                    None,
                    start + WINDOW
                )
                .record
        );
    }

    #[test]
    fn a_rejection_after_the_window_closes_it_and_draining_returns_the_rest() {
        let limiter = RejectionLimiter::default();
        let start = Instant::now();
        for _ in 0..=RECORDED_PER_WINDOW {
            limiter.admit(
                Channel::Stdin,
                Direction::FromKernel,
                "bad_signature",
                None,
                start,
            );
        }
        let later = limiter.admit(
            Channel::Stdin,
            Direction::FromKernel,
            "replayed",
            None,
            start + WINDOW * 2,
        );
        assert!(later.record);
        assert_eq!(later.closed.map(|summary| summary.count), Some(1));
        for _ in 0..RECORDED_PER_WINDOW {
            limiter.admit(
                Channel::Stdin,
                Direction::FromKernel,
                "replayed",
                None,
                start + WINDOW * 2,
            );
        }
        let rest = limiter.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].count, 1);
        assert_eq!(rest[0].reasons["replayed"], 1);
        assert!(limiter.drain().is_empty());
    }

    #[test]
    fn a_summary_names_its_first_distinct_senders() {
        let limiter = RejectionLimiter::default();
        let directory = PeerDirectory::default();
        let peers: Vec<_> = (0..SENDERS_KEPT + 2)
            .map(|_| Peer::accepted(Endpoint::Ipc { owner: None }, &directory))
            .collect();
        let start = Instant::now();
        for peer in std::iter::repeat_n(&peers[0], RECORDED_PER_WINDOW as usize)
            .chain(&peers)
            .chain(&peers)
        {
            limiter.admit(
                Channel::Shell,
                Direction::FromFrontend,
                "bad_signature",
                Some(peer),
                start,
            );
        }
        let summaries = limiter.drain();
        let [summary] = &summaries[..] else {
            panic!("one summary: {summaries:?}");
        };
        assert_eq!(summary.senders[..], peers[..SENDERS_KEPT]);
        assert!(summary.more_senders);
        let fields = crate::audit::events::AuditEvent::fields(&summary.event(&[]));
        assert_eq!(fields["more_senders"], true);
        assert!(!fields.contains_key("senders"), "none described");
    }

    #[test]
    fn every_wire_error_has_a_reason_kind() {
        let errors = [
            WireError::Empty,
            WireError::MissingDelimiter,
            WireError::TooFewFrames(1),
            WireError::Oversized { size: 2, limit: 1 },
            WireError::BadHeader("x".into()),
            WireError::MissingSignature,
            WireError::BadSignature,
            WireError::Replayed,
            WireError::NonCanonicalSignature,
            WireError::UnsupportedScheme("x".into()),
        ];
        let mut reasons: Vec<RejectReason> = errors.into_iter().map(RejectReason::from).collect();
        reasons.push(RejectReason::UnreadableContent {
            part: "content",
            error: "x".into(),
        });
        let kinds: std::collections::BTreeSet<_> = reasons.iter().map(reason_kind).collect();
        assert_eq!(kinds.len(), reasons.len());
    }
}
