//! Records of refused records: what a sender tried (`forged_record`, `record_refused`),
//! under the sender's verified identity, and how many refusals of one connection were
//! only counted (`refusals_suppressed`) so that a flood cannot fill the store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::audit::{Record, now_rfc3339};

/// A record refused for what it holds (fields, or a session its sender may not open).
pub const RECORD_REFUSED: &str = "record_refused";
/// Refusals of one connection that were counted, not recorded one by one.
pub const REFUSALS_SUPPRESSED: &str = "refusals_suppressed";
/// Refusals recorded one by one per connection and window; the rest are counted.
pub const RECORDED_PER_WINDOW: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

/// Per connection: which refusals get a record of their own.
#[derive(Debug)]
pub struct RefusalLimiter {
    window_start: Instant,
    recorded: u32,
    suppressed: BTreeMap<&'static str, u64>,
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
    pub fn refused(&mut self, action: &'static str, now: Instant) -> (bool, Option<Record>) {
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
        let counts = std::mem::take(&mut self.suppressed);
        let total: u64 = counts.values().sum();
        let mut fields = Map::new();
        fields.insert("suppressed_count".into(), json!(total));
        fields.insert("suppressed".into(), json!(counts));
        fields.insert(
            "first_refused_at".into(),
            json!(self.first_suppressed_at.take()),
        );
        fields.insert(
            "last_refused_at".into(),
            json!(self.last_suppressed_at.take()),
        );
        fields.insert(
            "reason".into(),
            json!(format!(
                "more than {RECORDED_PER_WINDOW} refused records on one connection within {} s",
                WINDOW.as_secs()
            )),
        );
        Some(refusal_record(REFUSALS_SUPPRESSED, fields))
    }
}

/// A record the collector writes about a refusal; `fields` become its `collector`
/// object. Stamp it with the sender's identity, then insert `collector` (stamp drops it).
pub fn refusal_record(action: &str, fields: Map<String, Value>) -> Record {
    let mut record = Record::new();
    record.insert(
        "event".into(),
        json!({"action": action, "kind": "event", "created": now_rfc3339(), "outcome": "failure"}),
    );
    record.insert("collector".into(), Value::Object(fields));
    record
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
            let (own, summary) = limiter.refused(RECORD_REFUSED, start);
            assert!(summary.is_none());
            recorded += u32::from(own);
        }
        for _ in 0..5 {
            limiter.refused(super::super::sessions::FORGED_RECORD, start);
        }
        assert_eq!(recorded, RECORDED_PER_WINDOW);
        // The next window opens with the count of the last one.
        let (own, summary) = limiter.refused(RECORD_REFUSED, start + WINDOW);
        assert!(own);
        let summary = summary.expect("a summary");
        assert_eq!(summary["event"]["action"], REFUSALS_SUPPRESSED);
        let fields = &summary["collector"];
        assert_eq!(fields["suppressed_count"], 95);
        assert_eq!(fields["suppressed"][RECORD_REFUSED], 90);
        assert_eq!(fields["suppressed"]["forged_record"], 5);
        assert!(limiter.summary().is_none(), "reported once");
    }
}
