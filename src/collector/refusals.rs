//! Records of refused records: what a sender tried (`forged_record`, `record_refused`),
//! under the sender's verified identity, and how many refusals of one connection were
//! only counted (`refusals_suppressed`) so that a flood cannot fill the store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::server::{PeerIdentity, stamp};
use crate::audit::events::{Action, AuditEvent, RefusalsSuppressed};
use crate::audit::{Record, now_rfc3339};

/// Refusals recorded one by one per connection and window; the rest are counted.
pub const RECORDED_PER_WINDOW: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

/// Per connection: which refusals get a record of their own.
#[derive(Debug)]
pub struct RefusalLimiter {
    window_start: Instant,
    recorded: u32,
    suppressed: BTreeMap<Action, u64>,
    first_suppressed_at: Option<String>,
    last_suppressed_at: Option<String>,
}

impl Default for RefusalLimiter {
    fn default() -> Self {
        RefusalLimiter {
            window_start: Instant::now(),
            recorded: 0,
            suppressed: BTreeMap::new(),
            first_suppressed_at: None,
            last_suppressed_at: None,
        }
    }
}

impl RefusalLimiter {
    /// A refusal of `action` happened at `now`. Returns whether it gets a record of its
    /// own and, when a window with counted refusals has just closed, the
    /// `refusals_suppressed` record to write first.
    pub fn refused(&mut self, action: Action, now: Instant) -> (bool, Option<Record>) {
        let mut summary = None;
        if now.duration_since(self.window_start) >= WINDOW {
            summary = self.summary();
            self.window_start = now;
            self.recorded = 0;
        }
        if self.recorded < RECORDED_PER_WINDOW {
            self.recorded += 1;
            return (true, summary);
        }
        *self.suppressed.entry(action).or_default() += 1;
        let at = now_rfc3339();
        self.first_suppressed_at.get_or_insert_with(|| at.clone());
        self.last_suppressed_at = Some(at);
        (false, summary)
    }

    /// The `refusals_suppressed` record for what was counted and not yet reported.
    pub fn summary(&mut self) -> Option<Record> {
        if self.suppressed.is_empty() {
            return None;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        Some(refusal_record(&RefusalsSuppressed {
            suppressed_count: suppressed.values().sum(),
            suppressed,
            first_refused_at: self.first_suppressed_at.take(),
            last_refused_at: self.last_suppressed_at.take(),
            reason: format!(
                "more than {RECORDED_PER_WINDOW} refused records on one connection within {} s",
                WINDOW.as_secs()
            ),
        }))
    }
}

/// A record the collector writes about a refusal; the event's fields become its
/// `collector` object. Stamp it with the sender's identity, then insert `collector`
/// (stamp drops it).
pub fn refusal_record(event: &impl AuditEvent) -> Record {
    let mut record = Record::new();
    record.insert("event".into(), event.header().to_value());
    record.insert("collector".into(), Value::Object(event.fields()));
    record
}

/// A record of the collector's (its details in `collector`) stamped with `identity`:
/// [`stamp`] drops `collector`, so it is put back after.
pub fn stamp_collector_record(
    mut record: Record,
    identity: &PeerIdentity,
    host: &str,
) -> Result<Record, String> {
    let details = record.remove("collector");
    let mut stamped = stamp(record, identity, host)?;
    if let Some(details) = details {
        stamped.insert("collector".into(), details);
    }
    Ok(stamped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_counted_after_the_first_refusals_of_each_window() {
        let mut limiter = RefusalLimiter::default();
        let start = limiter.window_start;
        let mut recorded = 0;
        for _ in 0..100 {
            let (own, summary) = limiter.refused(Action::RecordRefused, start);
            assert!(summary.is_none());
            recorded += u32::from(own);
        }
        for _ in 0..5 {
            limiter.refused(Action::ForgedRecord, start);
        }
        assert_eq!(recorded, RECORDED_PER_WINDOW);
        // The next window opens with the count of the last one.
        let (own, summary) = limiter.refused(Action::RecordRefused, start + WINDOW);
        assert!(own);
        let summary = summary.expect("a summary");
        assert_eq!(summary["event"]["action"], "refusals_suppressed");
        let fields = &summary["collector"];
        assert_eq!(fields["suppressed_count"], 95);
        assert_eq!(fields["suppressed"]["record_refused"], 90);
        assert_eq!(fields["suppressed"]["forged_record"], 5);
        assert!(limiter.summary().is_none(), "reported once");
    }
}
