//! The outputs of a session's cells, read from the store or PostgreSQL (the index keeps
//! no outputs):
//! the records of the session's range whose `parent_msg_id` is one of its cells, applied
//! as a frontend does (streams of one name merged, `clear_output`, `update_display_data`),
//! each kept with the sequence of the record it shows. Sizes are capped per output and
//! per page; what is cut is said.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::source::{ConsoleSource, SourceError};
use crate::review::replay::mime_bundle;
use crate::review::{fields, sessions::SessionKey};

/// The most text kept of one output (stream, text, traceback, HTML source).
pub const MAX_OUTPUT_TEXT: usize = 256 * 1024;
/// The most bytes of one image kept (its base64).
pub const MAX_IMAGE_BYTES: usize = 4 << 20;
/// The most output bytes one session page holds; later outputs are left out (said).
pub const MAX_PAGE_OUTPUT: usize = 12 << 20;

/// One output as a notebook shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stream {
        name: String,
        text: String,
        /// Bytes not kept because of [`MAX_OUTPUT_TEXT`].
        cut: usize,
    },
    Data {
        /// The record whose data is shown (an `update_display_data` replaces it).
        sequence: u64,
        bundle: Map<String, Value>,
        display_id: Option<String>,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: String,
    },
    /// Outputs left out because the page holds enough already.
    Omitted { outputs: usize },
}

/// The outputs of one session, by the msg_id of the request they answer.
#[derive(Debug, Default)]
pub struct SessionOutputs {
    pub by_request: HashMap<String, Vec<Output>>,
    /// Records read (to tell what a page cost).
    pub records_read: u64,
}

struct Collector<'a> {
    key: &'a SessionKey,
    outputs: SessionOutputs,
    clear_pending: HashMap<String, bool>,
    page_bytes: usize,
}

fn kept_text(value: Option<&Value>) -> String {
    value
        .and_then(fields::stored_text)
        .map(|text| text.into_owned())
        .unwrap_or_default()
}

/// `text` cut to `max` bytes (on a character boundary); the bytes left out.
pub fn cut_text(text: &mut String, max: usize) -> usize {
    if text.len() <= max {
        return 0;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    cut
}

fn bundle_size(bundle: &Map<String, Value>) -> usize {
    bundle
        .values()
        .map(|value| value.as_str().map_or(64, str::len))
        .sum()
}

impl Collector<'_> {
    fn add(&mut self, sequence: u64, value: &Value) {
        if SessionKey::of(value).as_ref() != Some(self.key) {
            return;
        }
        let Some(parent) = fields::jupyter(value, "parent_msg_id") else {
            return;
        };
        let field = |key: &str| fields::at(value, &["jupyter", key]);
        let action = fields::action(value);
        let output = match action {
            "stream" => Output::Stream {
                name: field("stream")
                    .and_then(Value::as_str)
                    .unwrap_or("stdout")
                    .to_owned(),
                text: kept_text(field("text")),
                cut: 0,
            },
            "display_data" | "execute_result" => Output::Data {
                sequence,
                bundle: mime_bundle(field("data")),
                display_id: fields::jupyter(value, "display_id").map(str::to_owned),
            },
            "error" => Output::Error {
                ename: fields::jupyter(value, "ename")
                    .unwrap_or_default()
                    .to_owned(),
                evalue: kept_text(field("evalue")),
                traceback: kept_text(field("traceback")),
            },
            "clear_output" => {
                let wait = field("wait") == Some(&Value::Bool(true));
                if wait {
                    self.clear_pending.insert(parent.to_owned(), true);
                } else if let Some(outputs) = self.outputs.by_request.get_mut(parent) {
                    outputs.clear();
                }
                return;
            }
            "update_display_data" => {
                if let Some(display_id) = fields::jupyter(value, "display_id") {
                    let bundle = mime_bundle(field("data"));
                    for outputs in self.outputs.by_request.values_mut() {
                        for output in outputs.iter_mut() {
                            if let Output::Data {
                                sequence: shown,
                                bundle: data,
                                display_id: Some(id),
                            } = output
                                && id == display_id
                            {
                                *shown = sequence;
                                *data = bundle.clone();
                            }
                        }
                    }
                }
                return;
            }
            _ => return,
        };
        self.push(parent, output);
    }

    fn push(&mut self, parent: &str, output: Output) {
        let outputs = self
            .outputs
            .by_request
            .entry(parent.to_owned())
            .or_default();
        if self.clear_pending.remove(parent) == Some(true) {
            outputs.clear();
        }
        let size = match &output {
            Output::Stream { text, .. } => text.len(),
            Output::Data { bundle, .. } => bundle_size(bundle),
            Output::Error {
                evalue, traceback, ..
            } => evalue.len() + traceback.len(),
            Output::Omitted { .. } => 0,
        };
        if self.page_bytes.saturating_add(size) > MAX_PAGE_OUTPUT {
            match outputs.last_mut() {
                Some(Output::Omitted { outputs }) => *outputs += 1,
                _ => outputs.push(Output::Omitted { outputs: 1 }),
            }
            return;
        }
        // Consecutive streams of one name are one output, as in a notebook.
        if let Output::Stream { name, text, .. } = &output
            && let Some(Output::Stream {
                name: last_name,
                text: last_text,
                cut,
            }) = outputs.last_mut()
            && last_name == name
        {
            let room = MAX_OUTPUT_TEXT.saturating_sub(last_text.len());
            let mut more = text.clone();
            *cut += cut_text(&mut more, room);
            self.page_bytes += more.len();
            last_text.push_str(&more);
            return;
        }
        let output = match output {
            Output::Stream { name, mut text, .. } => {
                let cut = cut_text(&mut text, MAX_OUTPUT_TEXT);
                Output::Stream { name, text, cut }
            }
            other => other,
        };
        self.page_bytes += size.min(MAX_OUTPUT_TEXT.max(MAX_IMAGE_BYTES));
        outputs.push(output);
    }
}

/// The outputs of the session `key`, from the records `first..=last` of `store` in
/// `source`. Only records that name the session's id are parsed.
pub fn read(
    source: &ConsoleSource,
    store: &str,
    key: &SessionKey,
    first: u64,
    last: u64,
) -> Result<SessionOutputs, SourceError> {
    let mut collector = Collector {
        key,
        outputs: SessionOutputs::default(),
        clear_pending: HashMap::new(),
        page_bytes: 0,
    };
    let needle = key.session_id.as_bytes();
    let finder = memchr::memmem::Finder::new(needle);
    source.for_each_between(store, first, last, &key.session_id, |sequence, line| {
        collector.outputs.records_read += 1;
        if finder.find(line).is_none() {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        collector.add(sequence, &value);
    })?;
    Ok(collector.outputs)
}

/// One record of the session `key`, when it shows data (the output route's source).
pub fn read_data_record(
    source: &ConsoleSource,
    store: &str,
    key: &SessionKey,
    sequence: u64,
) -> Result<Option<Map<String, Value>>, SourceError> {
    let Some(line) = source.record_at(store, sequence)? else {
        return Ok(None);
    };
    let Ok(value) = serde_json::from_slice::<Value>(&line) else {
        return Ok(None);
    };
    if SessionKey::of(&value).as_ref() != Some(key)
        || !matches!(
            fields::action(&value),
            "display_data" | "execute_result" | "update_display_data"
        )
    {
        return Ok(None);
    }
    Ok(Some(mime_bundle(fields::at(&value, &["jupyter", "data"]))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(action: &str, parent: &str, jupyter: Value) -> Value {
        let mut fields = json!({"session_id": "s1", "parent_msg_id": parent});
        if let (Some(target), Value::Object(more)) = (fields.as_object_mut(), jupyter) {
            target.extend(more);
        }
        json!({"event": {"action": action}, "user": {"id": "1000"}, "jupyter": fields})
    }

    fn collect(records: &[Value]) -> SessionOutputs {
        let key = SessionKey {
            session_id: "s1".into(),
            user_id: "1000".into(),
        };
        let mut collector = Collector {
            key: &key,
            outputs: SessionOutputs::default(),
            clear_pending: HashMap::new(),
            page_bytes: 0,
        };
        for (index, value) in records.iter().enumerate() {
            collector.add(index as u64 + 1, value);
        }
        collector.outputs
    }

    #[test]
    fn streams_merge_clear_and_updates_apply_like_a_notebook() {
        let outputs = collect(&[
            record("stream", "a", json!({"stream": "stdout", "text": "one "})),
            record("stream", "a", json!({"stream": "stdout", "text": "two"})),
            record("stream", "a", json!({"stream": "stderr", "text": "warn"})),
            record(
                "display_data",
                "b",
                json!({"data": {"text/plain": "old"}, "display_id": "d"}),
            ),
            record(
                "update_display_data",
                "c",
                json!({"data": {"text/plain": "new"}, "display_id": "d"}),
            ),
            record("stream", "c", json!({"stream": "stdout", "text": "gone"})),
            record("clear_output", "c", json!({"wait": true})),
            record("stream", "c", json!({"stream": "stdout", "text": "kept"})),
        ]);
        let a = &outputs.by_request["a"];
        assert_eq!(a.len(), 2);
        assert!(matches!(&a[0], Output::Stream { text, .. } if text == "one two"));
        let b = &outputs.by_request["b"];
        assert!(
            matches!(&b[0], Output::Data { sequence: 5, bundle, .. } if bundle["text/plain"] == "new")
        );
        let c = &outputs.by_request["c"];
        assert_eq!(c.len(), 1);
        assert!(matches!(&c[0], Output::Stream { text, .. } if text == "kept"));
    }

    #[test]
    fn other_sessions_and_users_are_not_shown() {
        let mut other_user = record("stream", "a", json!({"text": "theirs"}));
        other_user["user"]["id"] = json!("1001");
        let mut other_session = record("stream", "a", json!({"text": "theirs"}));
        other_session["jupyter"]["session_id"] = json!("s2");
        assert!(collect(&[other_user, other_session]).by_request.is_empty());
    }

    #[test]
    fn a_huge_stream_is_cut_and_says_so() {
        let huge = "x".repeat(MAX_OUTPUT_TEXT + 10);
        let outputs = collect(&[
            record("stream", "a", json!({"text": huge})),
            record("stream", "a", json!({"text": "more"})),
        ]);
        let Output::Stream { text, cut, .. } = &outputs.by_request["a"][0] else {
            panic!("not a stream");
        };
        assert_eq!(text.len(), MAX_OUTPUT_TEXT);
        assert_eq!(*cut, 14);
    }
}
