//! Building records: from an observed Jupyter message, or for a lifecycle event.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Record, SizePolicy};
use crate::connection::Channel;
use crate::wire::WireMessage;

/// Which side a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    FromFrontend,
    FromKernel,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::FromFrontend => "frontend",
            Self::FromKernel => "kernel",
        }
    }
}

/// A message the proxy relayed (or refused), as the audit sees it.
#[derive(Debug, Clone)]
pub struct Observation {
    pub channel: Channel,
    pub direction: Direction,
    pub message: WireMessage,
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
    record.insert(
        "event".into(),
        json!({ "action": action, "created": now_rfc3339(), "kind": "event" }),
    );
    record.insert("jupyter".into(), Value::Object(jupyter));
    record
}

/// Bookkeeping kept between messages is capped; past this it starts afresh.
const MAX_TRACKED: usize = 10_000;

/// Turns observations into records, remembering what later messages need: which
/// input prompts were for passwords, and when each execution started.
#[derive(Debug)]
pub struct RecordBuilder {
    context: SessionContext,
    policy: SizePolicy,
    password_prompts: HashMap<String, bool>,
    /// Whether the latest prompt asked for a password: some clients (jupyter_client's
    /// `input()`, hence `jupyter console`) answer without a parent header.
    latest_prompt_password: Option<bool>,
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

impl RecordBuilder {
    pub fn new(context: SessionContext, policy: SizePolicy) -> Self {
        Self {
            context,
            policy,
            password_prompts: HashMap::new(),
            latest_prompt_password: None,
            started: HashMap::new(),
        }
    }

    /// A record of `action` with the session's context; `fields` go into `jupyter`.
    pub fn event(&self, action: &str, fields: Map<String, Value>) -> Record {
        event_record(&self.context, action, fields)
    }

    /// The record of a message, or None for messages not worth one (status).
    pub fn message(&mut self, observation: &Observation) -> Option<Record> {
        let message = &observation.message;
        let header: Value = serde_json::from_slice(&message.header).unwrap_or(Value::Null);
        let msg_type = header["msg_type"].as_str().unwrap_or("unknown").to_owned();
        if msg_type == "status" || msg_type == "iopub_welcome" {
            return None;
        }
        let msg_id = header["msg_id"].as_str().unwrap_or_default().to_owned();
        let parent: Value = serde_json::from_slice(&message.parent_header).unwrap_or(Value::Null);
        let parent_msg_id = parent["msg_id"].as_str().map(str::to_owned);

        let mut fields = Map::new();
        fields.insert("msg_id".into(), json!(msg_id));
        if let Some(parent_msg_id) = &parent_msg_id {
            fields.insert("parent_msg_id".into(), json!(parent_msg_id));
        }
        fields.insert("channel".into(), json!(observation.channel.name()));
        fields.insert("from".into(), json!(observation.direction.name()));
        if observation.direction == Direction::FromFrontend {
            // Set by the client: a claim, never an identity.
            fields.insert("claimed_username".into(), header["username"].clone());
            fields.insert("client_session".into(), header["session"].clone());
        }

        let content: Value = match serde_json::from_slice(&message.content) {
            Ok(content) => content,
            Err(error) => {
                fields.insert("content_error".into(), json!(error.to_string()));
                return Some(self.event(&msg_type, fields));
            }
        };
        let mut outcome = None;
        self.describe(
            &msg_type,
            &msg_id,
            parent_msg_id.as_deref(),
            message,
            &content,
            &mut fields,
            &mut outcome,
        );
        let mut record = self.event(&msg_type, fields);
        if let (Some(outcome), Some(Value::Object(event))) = (outcome, record.get_mut("event")) {
            event.insert("outcome".into(), json!(outcome));
        }
        Some(record)
    }

    /// The type-specific part of a message's record.
    #[allow(clippy::too_many_arguments)]
    fn describe(
        &mut self,
        msg_type: &str,
        msg_id: &str,
        parent_msg_id: Option<&str>,
        message: &WireMessage,
        content: &Value,
        fields: &mut Map<String, Value>,
        outcome: &mut Option<&'static str>,
    ) {
        let policy = self.policy;
        let mut put = |key: &str, value: Value| {
            if !value.is_null() {
                fields.insert(key.to_owned(), value);
            }
        };
        match msg_type {
            "execute_request" => {
                remember(&mut self.started, msg_id.to_owned(), Instant::now());
                put("code", json!(content["code"].as_str().unwrap_or_default()));
                for key in ["silent", "store_history", "allow_stdin", "stop_on_error"] {
                    put(key, content[key].clone());
                }
                let metadata: Value =
                    serde_json::from_slice(&message.metadata).unwrap_or(Value::Null);
                // JupyterLab sends the cell's id as `cellId`.
                let cell_id = metadata
                    .get("cellId")
                    .or_else(|| metadata.get("cell_id"))
                    .cloned();
                put("cell_id", cell_id.unwrap_or(Value::Null));
            }
            "execute_input" => {
                put("code", json!(content["code"].as_str().unwrap_or_default()));
                put("execution_count", content["execution_count"].clone());
            }
            "execute_reply" => {
                let status = content["status"].as_str().unwrap_or("unknown");
                *outcome = Some(if status == "ok" { "success" } else { "failure" });
                put("status", json!(status));
                put("execution_count", content["execution_count"].clone());
                put("ename", content["ename"].clone());
                put("evalue", content["evalue"].clone());
                if let Some(started) = parent_msg_id.and_then(|id| self.started.remove(id)) {
                    put(
                        "duration_ms",
                        json!(started.elapsed().as_secs_f64() * 1000.0),
                    );
                }
            }
            "stream" => {
                put("stream", json!(content["name"]));
                put(
                    "text",
                    policy.text(content["text"].as_str().unwrap_or_default()),
                );
            }
            "display_data" | "execute_result" | "update_display_data" => {
                put("data", policy.mime_bundle(&content["data"]));
                put("execution_count", content["execution_count"].clone());
                put("display_id", content["transient"]["display_id"].clone());
            }
            "error" => {
                put("ename", content["ename"].clone());
                put("evalue", content["evalue"].clone());
                let traceback: Vec<&str> = content["traceback"]
                    .as_array()
                    .map(|lines| lines.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                put("traceback", policy.text(&traceback.join("\n")));
            }
            "clear_output" => put("wait", content["wait"].clone()),
            "input_request" => {
                let password = content["password"].as_bool().unwrap_or(false);
                remember(&mut self.password_prompts, msg_id.to_owned(), password);
                self.latest_prompt_password = Some(password);
                put("prompt", content["prompt"].clone());
                put("password", json!(password));
            }
            "input_reply" => {
                // A reply without its prompt answers the latest one (a kernel asks one
                // question at a time); with no prompt at all it counts as a password.
                let password = parent_msg_id
                    .and_then(|id| self.password_prompts.remove(id))
                    .or(self.latest_prompt_password.take())
                    .unwrap_or(true);
                if password {
                    put("value_dropped", json!(true));
                } else {
                    put(
                        "value",
                        policy.text(content["value"].as_str().unwrap_or_default()),
                    );
                }
            }
            "comm_open" | "comm_msg" | "comm_close" => {
                put("comm_id", content["comm_id"].clone());
                put("target_name", content["target_name"].clone());
                put("data", policy.json(&content["data"]));
            }
            reply if reply.ends_with("_reply") => {
                let status = content["status"].as_str().unwrap_or("unknown");
                put("status", json!(status));
            }
            _ => put("content", policy.json(content)),
        }
    }
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
            .message(&observe(
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
        builder.message(&observe(
            Direction::FromFrontend,
            Channel::Shell,
            "execute_request",
            "m1",
            None,
            json!({"code": "1/0"}),
        ));
        let record = builder
            .message(&observe(Direction::FromKernel, Channel::Shell, "execute_reply", "r1", Some("m1"), json!({"status": "error", "execution_count": 3, "ename": "ZeroDivisionError", "evalue": "division by zero"})))
            .expect("recorded");
        assert_eq!(record["event"]["outcome"], "failure");
        assert_eq!(record["jupyter"]["parent_msg_id"], "m1");
        assert_eq!(record["jupyter"]["execution_count"], 3);
        assert!(record["jupyter"]["duration_ms"].as_f64().is_some());
    }

    #[test]
    fn long_stream_text_is_capped_per_policy() {
        let record = builder()
            .message(&observe(
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

    #[test]
    fn password_replies_are_never_stored() {
        let mut builder = builder();
        builder.message(&observe(
            Direction::FromKernel,
            Channel::Stdin,
            "input_request",
            "q1",
            Some("m1"),
            json!({"prompt": "Password: ", "password": true}),
        ));
        let reply = builder
            .message(&observe(
                Direction::FromFrontend,
                Channel::Stdin,
                "input_reply",
                "a1",
                Some("q1"),
                json!({"value": "hunter2"}),
            ))
            .expect("recorded");
        assert!(!reply.to_string_lossy().contains("hunter2"));
        assert_eq!(reply["jupyter"]["value_dropped"], true);

        builder.message(&observe(
            Direction::FromKernel,
            Channel::Stdin,
            "input_request",
            "q2",
            Some("m1"),
            json!({"prompt": "Name: ", "password": false}),
        ));
        let reply = builder
            .message(&observe(
                Direction::FromFrontend,
                Channel::Stdin,
                "input_reply",
                "a2",
                Some("q2"),
                json!({"value": "Ada"}),
            ))
            .expect("recorded");
        assert_eq!(reply["jupyter"]["value"], "Ada");

        let orphan = builder
            .message(&observe(
                Direction::FromFrontend,
                Channel::Stdin,
                "input_reply",
                "a3",
                Some("unknown"),
                json!({"value": "secret"}),
            ))
            .expect("recorded");
        assert!(
            !orphan.to_string_lossy().contains("secret"),
            "unknown prompt: dropped"
        );
    }

    #[test]
    fn replies_without_a_parent_answer_the_latest_prompt() {
        // jupyter_client's input() (jupyter console) sends no parent header.
        let mut builder = builder();
        for (password, value, kept) in [(false, "Ada", true), (true, "hunter2", false)] {
            builder.message(&observe(
                Direction::FromKernel,
                Channel::Stdin,
                "input_request",
                "q",
                Some("m1"),
                json!({"prompt": "? ", "password": password}),
            ));
            let reply = builder
                .message(&observe(
                    Direction::FromFrontend,
                    Channel::Stdin,
                    "input_reply",
                    "a",
                    None,
                    json!({"value": value}),
                ))
                .expect("recorded");
            assert_eq!(reply.to_string_lossy().contains(value), kept, "{value}");
        }
    }

    #[test]
    fn status_is_not_recorded_and_bad_content_is() {
        let mut builder = builder();
        assert!(
            builder
                .message(&observe(
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
        let record = builder.message(&bad).expect("recorded");
        assert!(record["jupyter"]["content_error"].is_string());
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
