//! Where the review commands read records from: a store directory, or the central trail
//! in PostgreSQL (every forwarded store, or those `--store-id`/`--host` select).
//!
//! Both hand the same [`StoredRecord`]s (the stored line and its sequence) to the same
//! review code. From PostgreSQL, the parts of the query the server can check exactly
//! (user, id prefixes, time range, actions, a text the `--grep` pattern cannot match
//! without) are sent along as a prefilter so that it reads only what may match; the
//! review filter still decides for every record, so the output is what the same query
//! over the store directories would print. Records of one store come in sequence order;
//! of several stores, by time, then store id, then sequence.

use std::io::Write;
use std::path::PathBuf;

use regex_syntax::hir::{Hir, HirKind};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::ReviewError;
use super::filter::Filter;
use super::scan::{ScanReport, scan};
use crate::postgres::connect::PostgresOptions;
use crate::postgres::connect::PostgresTarget;
use crate::postgres::review::{RecordQuery, ReviewReader, StoreSelection};
use crate::store::{self, StoredRecord};

/// Literals shorter than this make a poor prefilter (they match nearly every line).
const MIN_LITERAL: usize = 3;

/// Records to review.
#[derive(Debug, Clone)]
pub enum RecordSource {
    /// A store directory (read only).
    Store(PathBuf),
    /// Forwarded stores in PostgreSQL.
    Postgres {
        options: PostgresOptions,
        stores: StoreSelection,
    },
}

/// What the server may drop before the review filter sees a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefilter {
    /// Every condition of the filter (`log`: a record is shown when it matches).
    Records,
    /// Only conditions every record of a session shares, user and session id (`sessions`
    /// counts all the records of a session a matching record belongs to).
    Sessions,
}

impl RecordSource {
    /// For messages and the notebook metadata: the store's path, or the server's URL
    /// (which never holds a password).
    pub fn label(&self) -> String {
        match self {
            Self::Store(dir) => std::fs::canonicalize(dir)
                .unwrap_or_else(|_| dir.clone())
                .display()
                .to_string(),
            Self::Postgres { options, stores } => {
                let mut label = format!("postgresql: {}", options.url);
                if let Some(id) = stores.store_id {
                    label.push_str(&format!(" store {id}"));
                }
                if let Some(host) = &stores.host {
                    label.push_str(&format!(" host {host}"));
                }
                label
            }
        }
    }

    /// Calls `each` with every record that may match `filter` (all of a store directory;
    /// what the `prefilter` lets through from PostgreSQL), in review order, and warns on
    /// `warnings` about every record that cannot be read.
    pub fn scan(
        &self,
        filter: &Filter,
        prefilter: Prefilter,
        warnings: &mut dyn Write,
        mut each: impl FnMut(StoredRecord) -> Result<(), ReviewError>,
    ) -> Result<ScanReport, ReviewError> {
        match self {
            Self::Store(dir) => scan(dir, warnings, each),
            Self::Postgres { options, stores } => {
                let target = PostgresTarget::new(options)?;
                let mut reader = ReviewReader::connect(&target)?;
                let selected: Vec<Uuid> = if stores == &StoreSelection::default() {
                    Vec::new()
                } else {
                    let found = reader.stores(stores)?;
                    if found.is_empty() {
                        let _ = writeln!(
                            warnings,
                            "jupyter-audit: warning: no forwarded store is selected by {}",
                            self.label()
                        );
                        return Ok(ScanReport::default());
                    }
                    found.iter().map(|store| store.store_id).collect()
                };
                let query = record_query(filter, prefilter);
                let mut report = ScanReport::default();
                reader.for_each_record(&selected, &query, |row| {
                    match store::parse_line(row.line.into_bytes()) {
                        Ok((raw, value, _)) => each(StoredRecord {
                            segment: PathBuf::from(format!("postgresql:{}", row.store_id)),
                            line: u64::try_from(row.sequence).unwrap_or_default(),
                            sequence: u64::try_from(row.sequence).unwrap_or_default(),
                            raw,
                            value,
                        }),
                        Err(kind) => {
                            report.unreadable += 1;
                            let _ = writeln!(
                                warnings,
                                "jupyter-audit: warning: store {} sequence {}: {kind}: skipped",
                                row.store_id, row.sequence
                            );
                            Ok(())
                        }
                    }
                })?;
                Ok(report)
            }
        }
    }
}

/// The server-side part of `filter`.
pub fn record_query(filter: &Filter, prefilter: Prefilter) -> RecordQuery {
    let mut query = RecordQuery {
        user: filter.user.clone(),
        session_prefix: filter.session.clone(),
        ..RecordQuery::default()
    };
    if prefilter == Prefilter::Sessions {
        return query;
    }
    // The `time` column holds the timestamp to the microsecond; a second of slack on each
    // side keeps every record the exact comparison keeps.
    let slack = Duration::seconds(1);
    let text = |time: OffsetDateTime| time.format(&Rfc3339).ok();
    query.kernel_prefix = filter.kernel.clone();
    query.since = filter.since.and_then(|t| text(t - slack));
    query.until = filter.until.and_then(|t| text(t + slack));
    query.actions = filter.actions.clone();
    if let Some(grep) = &filter.grep {
        query.line_contains = required_literals(grep.as_str());
    }
    query
}

/// Texts every match of `pattern` contains (a conservative subset: none when unsure).
pub fn required_literals(pattern: &str) -> Vec<String> {
    let Ok(hir) = regex_syntax::Parser::new().parse(pattern) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    collect_required(&hir, &mut found);
    let mut texts: Vec<String> = found
        .into_iter()
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .filter(|text| text.chars().count() >= MIN_LITERAL)
        .collect();
    texts.sort();
    texts.dedup();
    texts
}

/// Adds the byte strings every match of `hir` contains.
fn collect_required(hir: &Hir, found: &mut Vec<Vec<u8>>) {
    match hir.kind() {
        HirKind::Literal(literal) => found.push(literal.0.to_vec()),
        HirKind::Capture(capture) => collect_required(&capture.sub, found),
        HirKind::Repetition(repetition) if repetition.min >= 1 => {
            collect_required(&repetition.sub, found)
        }
        HirKind::Concat(parts) => {
            // Adjacent literals form one longer text.
            let mut run: Vec<u8> = Vec::new();
            for part in parts {
                if let HirKind::Literal(literal) = part.kind() {
                    run.extend_from_slice(&literal.0);
                    continue;
                }
                if !run.is_empty() {
                    found.push(std::mem::take(&mut run));
                }
                collect_required(part, found);
            }
            if !run.is_empty() {
                found.push(run);
            }
        }
        // Alternatives, optional parts, classes and assertions require no text.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::filter::{parse_regex, parse_since};

    #[test]
    fn grep_prefilters_on_the_text_every_match_contains() {
        assert_eq!(required_literals(r"import pandas"), ["import pandas"]);
        assert_eq!(
            required_literals(r"os\.system\((.*)rm -rf"),
            ["os.system(", "rm -rf"]
        );
        assert_eq!(required_literals(r"(abc)+def"), ["abc", "def"]);
        // No text is required of every match: no prefilter.
        for none in [r"foo|barbaz", r"(?i)secret", r"(abc)?", r"\w+", r"ab", "("] {
            assert!(required_literals(none).is_empty(), "{none}");
        }
    }

    #[test]
    fn sessions_push_down_only_what_all_of_a_sessions_records_share() {
        let filter = Filter {
            user: Some("alice".into()),
            session: Some("ab".into()),
            kernel: Some("k".into()),
            since: Some(parse_since("2024-05-01").expect("date")),
            actions: vec!["error".into()],
            grep: Some(parse_regex("import os").expect("regex")),
            ..Filter::default()
        };
        let sessions = record_query(&filter, Prefilter::Sessions);
        assert_eq!(
            sessions,
            RecordQuery {
                user: Some("alice".into()),
                session_prefix: Some("ab".into()),
                ..RecordQuery::default()
            }
        );
        let records = record_query(&filter, Prefilter::Records);
        assert_eq!(records.kernel_prefix.as_deref(), Some("k"));
        assert_eq!(records.since.as_deref(), Some("2024-04-30T23:59:59Z"));
        assert_eq!(records.actions, ["error"]);
        assert_eq!(records.line_contains, ["import os"]);
    }
}
