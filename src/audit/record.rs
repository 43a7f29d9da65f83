//! Building records: from an observed Jupyter message, or for a lifecycle event.
//!
//! A frontend message's record holds the message whole — header, parent_header,
//! metadata and content as sent, and its buffers in full — under `jupyter.request`,
//! besides the fields reviewers read (`code`, `cell_id`, …): whatever the kernel may
//! act on is on the record, including fields this version does not know. The one
//! exception is the answer to a password prompt, which is never stored. Kernel
//! messages (outputs) are kept within the size policy, and their record within the
//! output record budget.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::events::{AuditEvent, EventHeader, Outcome};
use super::{Record, SizePolicy};
use crate::connection::Channel;
use crate::wire::WireMessage;

/// Which side a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    FromFrontend,
    FromKernel,
}

impl Direction {
    /// `frontend` or `kernel`, as records and logs name the side.
    pub fn name(self) -> &'static str {
        match self {
            Self::FromFrontend => "frontend",
            Self::FromKernel => "kernel",
        }
    }
}

/// The four JSON parts of a message, read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMessage {
    pub header: Value,
    pub parent_header: Value,
    pub metadata: Value,
    pub content: Value,
}

/// A part of a message that is not JSON the audit can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}: {error}")]
pub struct UnreadablePart {
    /// `header`, `parent_header`, `metadata` or `content`.
    pub part: &'static str,
    pub error: String,
}

impl ParsedMessage {
    /// Reads all four parts; the error names the first one that is not JSON.
    pub fn read(message: &WireMessage) -> Result<Self, UnreadablePart> {
        let read = |part: &'static str, bytes: &[u8]| {
            serde_json::from_slice(bytes).map_err(|error| UnreadablePart {
                part,
                error: error.to_string(),
            })
        };
        Ok(Self {
            header: read("header", &message.header)?,
            parent_header: read("parent_header", &message.parent_header)?,
            metadata: read("metadata", &message.metadata)?,
            content: read("content", &message.content)?,
        })
    }
}

/// A message the proxy relayed (or refused), as the audit sees it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub channel: Channel,
    pub direction: Direction,
    pub message: WireMessage,
    /// The message's parts as the relay already read them (frontend requests), so
    /// they are not read twice.
    pub parsed: Option<ParsedMessage>,
}

/// What every record of one proxy run carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    /// One per proxy run.
    pub session_id: String,
    /// Jupyter's kernel id (from the connection file's name), when known.
    pub kernel_id: Option<String>,
    pub kernel_name: Option<String>,
}

/// A record with the fields every record has: `event.action`, `event.created`, and
/// the session's `jupyter.*` context. `fields` go into `jupyter`.
pub fn event_record(context: &SessionContext, action: &str, fields: Map<String, Value>) -> Record {
    record_with(context, &EventHeader::new(action), fields)
}

/// A record with `event` and the session's context; `fields` go into `jupyter`.
fn record_with(
    context: &SessionContext,
    event: &EventHeader,
    fields: Map<String, Value>,
) -> Record {
    let mut jupyter = Map::new();
    jupyter.insert("session_id".into(), json!(context.session_id));
    if let Some(kernel_id) = &context.kernel_id {
        jupyter.insert("kernel_id".into(), json!(kernel_id));
    }
    if let Some(kernel_name) = &context.kernel_name {
        jupyter.insert("kernel_name".into(), json!(kernel_name));
    }
    jupyter.extend(fields);
    let mut record = Record::new();
    record.insert("event".into(), event.to_value());
    record.insert("jupyter".into(), Value::Object(jupyter));
    record
}

/// The record of an event that is not a message, with the session's context.
pub fn record_event(context: &SessionContext, event: &impl AuditEvent) -> Record {
    record_with(context, &event.header(), event.fields())
}

/// The record of one of the review console's events: `event`, the console run's
/// session (`jupyter.session_id`, which the collector binds to the console process as
/// it binds a kernel's session to its proxy) and the event's fields under `review`.
pub fn review_record(console_session_id: &str, event: &impl AuditEvent) -> Record {
    let mut record = record_with(
        &SessionContext {
            session_id: console_session_id.to_owned(),
            ..SessionContext::default()
        },
        &event.header(),
        Map::new(),
    );
    record.insert("review".into(), Value::Object(event.fields()));
    record
}

/// Bookkeeping kept between messages is capped; past this it starts afresh.
const MAX_TRACKED: usize = 10_000;

/// The most an output's record may take once serialised. Far below the collector's
/// frame limit, so that an output the user saw always leaves a record: past it the
/// record is rebuilt with a tighter size policy (each MIME entry, text and buffer still
/// with its size and SHA-256).
pub const OUTPUT_RECORD_BUDGET: usize = 16 * 1024 * 1024;
/// Kernel messages smaller than this cannot make a record near the budget (JSON
/// escaping grows a text at most sixfold), so their record is not measured.
const MEASURE_ABOVE_BYTES: usize = OUTPUT_RECORD_BUDGET / 8;

/// Turns observations into records, remembering what later messages need: which
/// input prompt the kernel waits on, and when each execution started.
#[derive(Debug)]
pub struct RecordBuilder {
    context: SessionContext,
    policy: SizePolicy,
    /// The prompt the kernel waits on now, if any. The kernel takes the next
    /// `input_reply` as the answer, whatever its parent header or sender says, so this
    /// prompt decides whether a reply's value is kept.
    open_prompt: Option<OpenPrompt>,
    started: HashMap<String, Instant>,
}

/// The current time as Jupyter and ECS write it.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn remember<V>(map: &mut HashMap<String, V>, key: String, value: V) {
    if map.len() >= MAX_TRACKED {
        map.clear();
    }
    map.insert(key, value);
}

/// An input prompt the kernel waits on.
#[derive(Debug)]
struct OpenPrompt {
    password: bool,
    /// The request whose execution asked; the kernel stops waiting when it ends.
    parent_msg_id: Option<String>,
}

/// What the builder learned from a message before describing it.
#[derive(Debug, Default)]
struct Tracked {
    /// execute_reply: how long since its request.
    duration_ms: Option<f64>,
    /// input_reply: the prompt it answers asked for a password.
    password_answer: bool,
}

impl RecordBuilder {
    pub fn new(context: SessionContext, policy: SizePolicy) -> Self {
        Self {
            context,
            policy,
            open_prompt: None,
            started: HashMap::new(),
        }
    }

    /// A record of `action` with the session's context; `fields` go into `jupyter`.
    pub fn event(&self, action: &str, fields: Map<String, Value>) -> Record {
        event_record(&self.context, action, fields)
    }

    /// The record of a message, or None for messages not worth one (status).
    pub fn message(&mut self, observation: Observation) -> Option<Record> {
        let Observation {
            channel,
            direction,
            message,
            parsed,
        } = observation;
        let parsed = match parsed {
            Some(parsed) => Ok(parsed),
            None => ParsedMessage::read(&message),
        };
        let header = match &parsed {
            Ok(parsed) => parsed.header.clone(),
            Err(_) => serde_json::from_slice(&message.header).unwrap_or(Value::Null),
        };
        let msg_type = header["msg_type"].as_str().unwrap_or("unknown").to_owned();
        if msg_type == "status" || msg_type == "iopub_welcome" {
            return None;
        }
        let msg_id = header["msg_id"].as_str().unwrap_or_default().to_owned();
        let parent_msg_id = match &parsed {
            Ok(parsed) => parsed.parent_header["msg_id"].as_str().map(str::to_owned),
            Err(_) => serde_json::from_slice::<Value>(&message.parent_header)
                .ok()
                .and_then(|parent| parent["msg_id"].as_str().map(str::to_owned)),
        };

        let mut fields = Map::new();
        fields.insert("msg_id".into(), json!(msg_id));
        if let Some(parent_msg_id) = &parent_msg_id {
            fields.insert("parent_msg_id".into(), json!(parent_msg_id));
        }
        fields.insert("channel".into(), json!(channel.name()));
        fields.insert("from".into(), json!(direction.name()));
        if direction == Direction::FromFrontend {
            // Set by the client: a claim, never an identity.
            fields.insert("claimed_username".into(), header["username"].clone());
            fields.insert("client_session".into(), header["session"].clone());
        }

        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                // Only kernel messages and unaudited types get here: the relay refuses
                // frontend requests the audit cannot read.
                fields.insert("content_error".into(), json!(error.to_string()));
                return Some(self.event(&msg_type, fields));
            }
        };
        let tracked = self.track(&msg_type, &msg_id, parent_msg_id.as_deref(), &parsed);
        let mut outcome = None;
        if direction == Direction::FromFrontend {
            describe_request(&msg_type, &parsed, tracked.password_answer, &mut fields);
            fields.insert(
                "request".into(),
                whole_request(parsed, &message, tracked.password_answer, self.policy),
            );
        } else {
            outcome = reply_outcome(&msg_type, &parsed.content);
            let output = Output {
                msg_type: &msg_type,
                content: &parsed.content,
                message: &message,
                tracked: &tracked,
            };
            if message.size() < MEASURE_ABOVE_BYTES {
                // Too small to come near the budget: described once, in place.
                describe_output(&output, self.policy, &mut fields);
            } else {
                let base = fields;
                let mut policy = self.policy;
                fields = loop {
                    let mut fields = base.clone();
                    describe_output(&output, policy, &mut fields);
                    let size = serde_json::to_vec(&fields).map_or(usize::MAX, |bytes| bytes.len());
                    if size <= OUTPUT_RECORD_BUDGET {
                        if policy != self.policy {
                            fields.insert("text_cap_applied".into(), json!(policy.text_cap));
                        }
                        break fields;
                    }
                    match policy.tighter() {
                        Some(tighter) => policy = tighter,
                        None => break over_budget(base, &message),
                    }
                };
            }
        }
        let event = EventHeader {
            outcome,
            ..EventHeader::new(&msg_type)
        };
        Some(record_with(&self.context, &event, fields))
    }

    /// Updates what later messages need to know, once per message.
    fn track(
        &mut self,
        msg_type: &str,
        msg_id: &str,
        parent_msg_id: Option<&str>,
        parsed: &ParsedMessage,
    ) -> Tracked {
        let mut tracked = Tracked::default();
        match msg_type {
            "execute_request" => remember(&mut self.started, msg_id.to_owned(), Instant::now()),
            "execute_reply" => {
                tracked.duration_ms = parent_msg_id
                    .and_then(|id| self.started.remove(id))
                    .map(|started| started.elapsed().as_secs_f64() * 1000.0);
                // An execution that ends (an interrupted getpass, say) no longer waits:
                // a later reply cannot be that prompt's answer.
                if self.open_prompt.as_ref().is_some_and(|prompt| {
                    prompt.parent_msg_id.is_some()
                        && prompt.parent_msg_id.as_deref() == parent_msg_id
                }) {
                    self.open_prompt = None;
                }
            }
            "input_request" => {
                self.open_prompt = Some(OpenPrompt {
                    password: parsed.content["password"].as_bool().unwrap_or(false),
                    parent_msg_id: parent_msg_id.map(str::to_owned),
                });
            }
            "input_reply" => {
                // The kernel takes this reply as the answer to the prompt it waits on,
                // whatever prompt the reply names; with no prompt open it is kept.
                tracked.password_answer = self
                    .open_prompt
                    .take()
                    .is_some_and(|prompt| prompt.password);
            }
            _ => {}
        }
        tracked
    }
}

/// The fields reviewers read of a frontend request; the request itself is kept whole
/// beside them.
fn describe_request(
    msg_type: &str,
    parsed: &ParsedMessage,
    password_answer: bool,
    fields: &mut Map<String, Value>,
) {
    let content = &parsed.content;
    let mut put = |key: &str, value: &Value| {
        if !value.is_null() {
            fields.insert(key.to_owned(), value.clone());
        }
    };
    match msg_type {
        "execute_request" => {
            put("code", &json!(content["code"].as_str().unwrap_or_default()));
            for key in ["silent", "store_history", "allow_stdin", "stop_on_error"] {
                put(key, &content[key]);
            }
            // JupyterLab sends the cell's id as `cellId`.
            let metadata = &parsed.metadata;
            put(
                "cell_id",
                metadata
                    .get("cellId")
                    .or_else(|| metadata.get("cell_id"))
                    .unwrap_or(&Value::Null),
            );
        }
        "input_reply" if password_answer => put("value_dropped", &json!(true)),
        "input_reply" => put("value", &content["value"]),
        "comm_open" | "comm_msg" | "comm_close" => {
            put("comm_id", &content["comm_id"]);
            put("target_name", &content["target_name"]);
        }
        _ => {}
    }
}

/// A frontend request as the kernel will see it: its four parts as sent and its
/// buffers in full. The answer to a password prompt leaves out the value.
fn whole_request(
    parsed: ParsedMessage,
    message: &WireMessage,
    password_answer: bool,
    policy: SizePolicy,
) -> Value {
    let ParsedMessage {
        header,
        parent_header,
        metadata,
        mut content,
    } = parsed;
    if password_answer && let Value::Object(content) = &mut content {
        content.remove("value");
    }
    let mut request = Map::new();
    request.insert("header".into(), header);
    request.insert("parent_header".into(), parent_header);
    request.insert("metadata".into(), metadata);
    request.insert("content".into(), content);
    if !message.buffers.is_empty() {
        let buffers = message
            .buffers
            .iter()
            .map(|buffer| policy.buffer(buffer, true))
            .collect();
        request.insert("buffers".into(), Value::Array(buffers));
    }
    Value::Object(request)
}

/// A kernel message to describe, and what the builder learned of it.
struct Output<'a> {
    msg_type: &'a str,
    content: &'a Value,
    message: &'a WireMessage,
    tracked: &'a Tracked,
}

/// How an execution ended, for `event.outcome`: replies to execute requests have one.
fn reply_outcome(msg_type: &str, content: &Value) -> Option<Outcome> {
    (msg_type == "execute_reply").then(|| {
        if content["status"] == "ok" {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    })
}

/// The type-specific part of a kernel message's record, within `policy`, into `fields`.
fn describe_output(output: &Output<'_>, policy: SizePolicy, fields: &mut Map<String, Value>) {
    let Output {
        msg_type,
        content,
        message,
        tracked,
    } = *output;
    let text_of = |value: &Value| policy.text(value.as_str().unwrap_or_default());
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            fields.insert(key.to_owned(), value);
        }
    };
    match msg_type {
        "execute_input" => {
            put("code", text_of(&content["code"]));
            put(
                "execution_count",
                optional_text(policy, &content["execution_count"]),
            );
        }
        "execute_reply" => {
            put("status", status_of(policy, content));
            put(
                "execution_count",
                optional_text(policy, &content["execution_count"]),
            );
            put("ename", optional_text(policy, &content["ename"]));
            put("evalue", optional_text(policy, &content["evalue"]));
            put("duration_ms", json!(tracked.duration_ms));
        }
        "stream" => {
            put("stream", optional_text(policy, &content["name"]));
            put("text", text_of(&content["text"]));
        }
        "display_data" | "execute_result" | "update_display_data" => {
            let (data, omitted) = policy.mime_bundle(&content["data"]);
            put("data", data);
            if omitted > 0 {
                put("data_entries_omitted", json!(omitted));
                put("content_digest", SizePolicy::digest(&message.content));
            }
            put(
                "execution_count",
                optional_text(policy, &content["execution_count"]),
            );
            put(
                "display_id",
                optional_text(policy, &content["transient"]["display_id"]),
            );
        }
        "error" => {
            put("ename", optional_text(policy, &content["ename"]));
            put("evalue", optional_text(policy, &content["evalue"]));
            let traceback: Vec<&str> = content["traceback"]
                .as_array()
                .map(|lines| lines.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            put("traceback", policy.text(&traceback.join("\n")));
        }
        "clear_output" => put("wait", optional_text(policy, &content["wait"])),
        "input_request" => {
            put("prompt", optional_text(policy, &content["prompt"]));
            put(
                "password",
                json!(content["password"].as_bool().unwrap_or(false)),
            );
        }
        "comm_open" | "comm_msg" | "comm_close" => {
            put("comm_id", optional_text(policy, &content["comm_id"]));
            put(
                "target_name",
                optional_text(policy, &content["target_name"]),
            );
            put("data", policy.json(&content["data"]));
        }
        reply if reply.ends_with("_reply") => put("status", status_of(policy, content)),
        _ => put("content", policy.json(content)),
    }
    if !message.buffers.is_empty() {
        let buffers = message
            .buffers
            .iter()
            .map(|buffer| policy.buffer(buffer, false))
            .collect();
        put("buffers", Value::Array(buffers));
    }
}

/// A string field of an output within the policy; other values as they are (small),
/// null when missing.
fn optional_text(policy: SizePolicy, value: &Value) -> Value {
    match value {
        Value::String(text) => policy.text(text),
        Value::Null => Value::Null,
        other => policy.json(other),
    }
}

/// A reply's status within the policy; `unknown` when it has none.
fn status_of(policy: SizePolicy, content: &Value) -> Value {
    match &content["status"] {
        Value::Null => json!("unknown"),
        status => optional_text(policy, status),
    }
}

/// An output whose record exceeds the budget even with nothing kept of its texts
/// (thousands of MIME entries, giant keys): its content's size and SHA-256.
fn over_budget(mut fields: Map<String, Value>, message: &WireMessage) -> Map<String, Value> {
    fields.insert(
        "content_digest".into(),
        SizePolicy::digest(&message.content),
    );
    fields.insert("text_cap_applied".into(), json!(0));
    fields
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn builder() -> RecordBuilder {
        RecordBuilder::new(
            SessionContext {
                session_id: "s1".into(),
                kernel_id: Some("k1".into()),
                kernel_name: Some("python3".into()),
            },
            SizePolicy {
                text_cap: 16,
                keep_binary: false,
            },
        )
    }

    fn observe(
        direction: Direction,
        channel: Channel,
        msg_type: &str,
        msg_id: &str,
        parent: Option<&str>,
        content: Value,
    ) -> Observation {
        let header = json!({"msg_id": msg_id, "msg_type": msg_type, "username": "claimed-bob", "session": "client-1"});
        let parent = parent.map_or(json!({}), |id| json!({"msg_id": id}));
        Observation {
            channel,
            direction,
            parsed: None,
            message: WireMessage::new(
                vec![],
                Bytes::from(header.to_string()),
                Bytes::from(parent.to_string()),
                Bytes::from(json!({"cellId": "cell-7"}).to_string()),
                Bytes::from(content.to_string()),
            ),
        }
    }

    #[test]
    fn execute_request_keeps_code_cell_id_and_claimed_user() {
        let mut builder = builder();
        let record = builder
            .message(observe(
                Direction::FromFrontend,
                Channel::Shell,
                "execute_request",
                "m1",
                None,
                json!({"code": "print('a very long line of code')", "silent": false}),
            ))
            .expect("recorded");
        assert_eq!(record["event"]["action"], "execute_request");
        let jupyter = &record["jupyter"];
        assert_eq!(
            jupyter["code"], "print('a very long line of code')",
            "code is kept in full"
        );
        assert_eq!(jupyter["cell_id"], "cell-7");
        assert_eq!(jupyter["claimed_username"], "claimed-bob");
        assert_eq!(jupyter["session_id"], "s1");
        assert_eq!(jupyter["kernel_id"], "k1");
        assert_eq!(jupyter["msg_id"], "m1");
        assert!(
            record.get("user").is_none(),
            "identity is the collector's business"
        );
    }

    #[test]
    fn execute_reply_has_outcome_and_duration() {
        let mut builder = builder();
        builder.message(observe(
            Direction::FromFrontend,
            Channel::Shell,
            "execute_request",
            "m1",
            None,
            json!({"code": "1/0"}),
        ));
        let record = builder
            .message(observe(Direction::FromKernel, Channel::Shell, "execute_reply", "r1", Some("m1"), json!({"status": "error", "execution_count": 3, "ename": "ZeroDivisionError", "evalue": "division by zero"})))
            .expect("recorded");
        assert_eq!(record["event"]["outcome"], "failure");
        assert_eq!(record["jupyter"]["parent_msg_id"], "m1");
        assert_eq!(record["jupyter"]["execution_count"], 3);
        assert!(record["jupyter"]["duration_ms"].as_f64().is_some());
    }

    #[test]
    fn long_stream_text_is_capped_per_policy() {
        let record = builder()
            .message(observe(
                Direction::FromKernel,
                Channel::Iopub,
                "stream",
                "o1",
                Some("m1"),
                json!({"name": "stdout", "text": "x".repeat(100)}),
            ))
            .expect("recorded");
        assert_eq!(record["jupyter"]["text"]["size"], 100);
        assert_eq!(record["jupyter"]["stream"], "stdout");
    }

    fn prompt(builder: &mut RecordBuilder, id: &str, password: bool) {
        builder.message(observe(
            Direction::FromKernel,
            Channel::Stdin,
            "input_request",
            id,
            Some("m1"),
            json!({"prompt": "? ", "password": password}),
        ));
    }

    fn answer(builder: &mut RecordBuilder, parent: Option<&str>, value: &str) -> Record {
        builder
            .message(observe(
                Direction::FromFrontend,
                Channel::Stdin,
                "input_reply",
                "a",
                parent,
                json!({"value": value}),
            ))
            .expect("recorded")
    }

    #[test]
    fn password_answers_are_never_stored_and_other_answers_are_kept_whole() {
        let mut builder = builder();
        prompt(&mut builder, "q1", true);
        let reply = answer(&mut builder, Some("q1"), "hunter2");
        assert!(!reply.to_string_lossy().contains("hunter2"));
        assert_eq!(reply["jupyter"]["value_dropped"], true);
        assert!(
            reply["jupyter"]["request"]["content"]
                .get("value")
                .is_none()
        );

        prompt(&mut builder, "q2", false);
        let long_answer = "x".repeat(100);
        let reply = answer(&mut builder, Some("q2"), &long_answer);
        assert_eq!(
            reply["jupyter"]["value"],
            long_answer.as_str(),
            "not capped"
        );
        assert_eq!(
            reply["jupyter"]["request"]["content"]["value"],
            long_answer.as_str()
        );
    }

    #[test]
    fn a_reply_answers_the_open_prompt_whatever_parent_it_names() {
        // A password prompt left unanswered, then a plain one: a reply naming the old
        // password prompt still answers the plain one in the kernel, so it is kept.
        let mut builder = builder();
        prompt(&mut builder, "old-password", true);
        prompt(&mut builder, "plain", false);
        let reply = answer(&mut builder, Some("old-password"), "exec-me");
        assert_eq!(reply["jupyter"]["value"], "exec-me");
        // A password prompt whose execution ended (interrupted) no longer waits.
        prompt(&mut builder, "ended", true);
        builder.message(observe(
            Direction::FromKernel,
            Channel::Shell,
            "execute_reply",
            "r1",
            Some("m1"),
            json!({"status": "error"}),
        ));
        let reply = answer(&mut builder, Some("ended"), "after-the-end");
        assert_eq!(reply["jupyter"]["value"], "after-the-end");
        // No prompt open at all: nothing to protect, kept.
        let reply = answer(&mut builder, Some("nothing"), "stray");
        assert_eq!(reply["jupyter"]["value"], "stray");
        // jupyter_client's input() (jupyter console) sends no parent header.
        prompt(&mut builder, "q", true);
        let reply = answer(&mut builder, None, "hunter2");
        assert!(!reply.to_string_lossy().contains("hunter2"));
    }

    #[test]
    fn a_request_is_recorded_whole_with_fields_this_version_does_not_know() {
        let mut observation = observe(
            Direction::FromFrontend,
            Channel::Shell,
            "execute_request",
            "m1",
            None,
            json!({"code": "", "silent": true,
                   "user_expressions": {"x": "__import__('os').getpid()"},
                   "future_field": ["y".repeat(64)]}),
        );
        observation
            .message
            .buffers
            .push(bytes::Bytes::from_static(b"exec('buffer code')"));
        let record = builder().message(observation).expect("recorded");
        let request = &record["jupyter"]["request"];
        assert_eq!(
            request["content"]["user_expressions"]["x"],
            "__import__('os').getpid()"
        );
        assert_eq!(request["content"]["future_field"][0], "y".repeat(64));
        assert_eq!(request["metadata"]["cellId"], "cell-7");
        assert_eq!(request["header"]["msg_id"], "m1");
        assert_eq!(request["parent_header"], json!({}));
        assert_eq!(
            request["buffers"][0]["base64"],
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                b"exec('buffer code')"
            )
        );
        assert_eq!(request["buffers"][0]["size"], 19);
    }

    #[test]
    fn request_fields_are_never_capped() {
        let code = "1\n".repeat(1000);
        let record = builder()
            .message(observe(
                Direction::FromFrontend,
                Channel::Control,
                "debug_request",
                "d1",
                None,
                json!({"command": "evaluate", "arguments": {"expression": code}}),
            ))
            .expect("recorded");
        assert_eq!(
            record["jupyter"]["request"]["content"]["arguments"]["expression"],
            code.as_str()
        );
    }

    #[test]
    fn outputs_over_the_record_budget_keep_size_and_hash_per_mime_type() {
        let mut builder = RecordBuilder::new(builder().context, SizePolicy::default());
        let entries: Map<String, Value> = (0..20)
            .map(|index| (format!("text/x-{index}"), json!("z".repeat(1_100_000))))
            .collect();
        let record = builder
            .message(observe(
                Direction::FromKernel,
                Channel::Iopub,
                "display_data",
                "o1",
                Some("m1"),
                json!({"data": entries, "metadata": {}}),
            ))
            .expect("recorded");
        let size = Value::Object(record.clone()).to_string().len();
        assert!(size <= OUTPUT_RECORD_BUDGET, "{size}");
        let kept = &record["jupyter"]["data"]["text/x-7"];
        assert_eq!(kept["size"], 1_100_000);
        assert_eq!(kept["truncated"], true);
        assert!(
            kept["head"]
                .as_str()
                .is_some_and(|head| head.starts_with('z'))
        );
        assert!(record["jupyter"]["text_cap_applied"].as_u64() < Some(1_048_576));

        let huge_error = builder
            .message(observe(
                Direction::FromKernel,
                Channel::Iopub,
                "error",
                "o2",
                Some("m1"),
                json!({"ename": "E", "evalue": "v".repeat(3_000_000), "traceback": []}),
            ))
            .expect("recorded");
        assert_eq!(huge_error["jupyter"]["evalue"]["size"], 3_000_000);
    }

    #[test]
    fn status_is_not_recorded_and_bad_content_is() {
        let mut builder = builder();
        assert!(
            builder
                .message(observe(
                    Direction::FromKernel,
                    Channel::Iopub,
                    "status",
                    "s",
                    None,
                    json!({"execution_state": "busy"})
                ))
                .is_none()
        );
        let mut bad = observe(
            Direction::FromFrontend,
            Channel::Shell,
            "execute_request",
            "m9",
            None,
            json!({}),
        );
        bad.message.content = Bytes::from_static(b"{not json");
        bad.direction = Direction::FromKernel;
        let record = builder.message(bad).expect("recorded");
        assert!(record["jupyter"]["content_error"].is_string());
    }

    #[test]
    fn every_field_of_a_message_record_is_in_the_schema() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schema/audit-record.schema.json"))
                .expect("the schema is JSON");
        let mut builder = builder();
        let mut records = Vec::new();
        let mut add = |direction, channel, msg_type, content: Value, buffers: bool| {
            let mut observation = observe(direction, channel, msg_type, "m1", Some("m0"), content);
            if buffers {
                observation
                    .message
                    .buffers
                    .push(Bytes::from_static(b"\x00"));
            }
            records.extend(builder.message(observation));
        };
        use Channel::{Iopub, Shell, Stdin};
        use Direction::{FromFrontend as Frontend, FromKernel as Kernel};
        let bundle = json!({"text/plain": "x", "image/png": "AAEC"});
        let padded: Map<String, Value> = (0..300)
            .map(|index| (format!("text/x-{index}"), json!("a")))
            .collect();
        add(
            Frontend,
            Shell,
            "execute_request",
            json!({"code": "1", "silent": false, "store_history": true, "allow_stdin": true, "stop_on_error": true}),
            true,
        );
        add(
            Kernel,
            Iopub,
            "execute_input",
            json!({"code": "1", "execution_count": 1}),
            false,
        );
        add(
            Kernel,
            Shell,
            "execute_reply",
            json!({"status": "error", "execution_count": 1, "ename": "E", "evalue": "v"}),
            false,
        );
        add(
            Kernel,
            Iopub,
            "stream",
            json!({"name": "stdout", "text": "x"}),
            false,
        );
        add(
            Kernel,
            Iopub,
            "display_data",
            json!({"data": bundle, "transient": {"display_id": "d"}}),
            false,
        );
        add(
            Kernel,
            Iopub,
            "execute_result",
            json!({"data": padded, "execution_count": 1}),
            false,
        );
        add(
            Kernel,
            Iopub,
            "error",
            json!({"ename": "E", "evalue": "v", "traceback": ["t"]}),
            false,
        );
        add(Kernel, Iopub, "clear_output", json!({"wait": true}), false);
        add(
            Kernel,
            Stdin,
            "input_request",
            json!({"prompt": "?", "password": true}),
            false,
        );
        add(
            Frontend,
            Stdin,
            "input_reply",
            json!({"value": "secret"}),
            false,
        );
        add(
            Frontend,
            Stdin,
            "input_reply",
            json!({"value": "kept"}),
            false,
        );
        add(
            Frontend,
            Shell,
            "comm_open",
            json!({"comm_id": "c", "target_name": "t", "data": {}}),
            true,
        );
        add(
            Kernel,
            Iopub,
            "comm_msg",
            json!({"comm_id": "c", "data": {"a": 1}}),
            true,
        );
        add(
            Kernel,
            Shell,
            "kernel_info_reply",
            json!({"status": "ok"}),
            false,
        );
        add(Kernel, Iopub, "something_new", json!({"x": 1}), false);
        let mut unreadable = observe(Kernel, Iopub, "stream", "m2", None, json!({}));
        unreadable.message.content = Bytes::from_static(b"{not json");
        records.extend(builder.message(unreadable));

        let declared = |path: &str| -> Vec<String> {
            schema
                .pointer(path)
                .and_then(Value::as_object)
                .expect("declared properties")
                .keys()
                .cloned()
                .collect()
        };
        let jupyter = declared("/$defs/jupyter/properties");
        let event = declared("/properties/event/properties");
        for record in &records {
            for (object, declared) in [("jupyter", &jupyter), ("event", &event)] {
                for key in record[object].as_object().expect("an object").keys() {
                    assert!(
                        declared.contains(key),
                        "{object}.{key} of {} is not in the schema",
                        record["event"]["action"]
                    );
                }
            }
        }
        let written: std::collections::BTreeSet<&str> = records
            .iter()
            .flat_map(|record| record["jupyter"].as_object().expect("jupyter").keys())
            .map(String::as_str)
            .collect();
        for key in [
            "value_dropped",
            "data_entries_omitted",
            "content_digest",
            "content_error",
            "buffers",
            "content",
        ] {
            assert!(written.contains(key), "the samples write {key}");
        }
    }

    trait Lossy {
        fn to_string_lossy(&self) -> String;
    }

    impl Lossy for Record {
        fn to_string_lossy(&self) -> String {
            Value::Object(self.clone()).to_string()
        }
    }
}
