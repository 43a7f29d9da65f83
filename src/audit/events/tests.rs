//! The event types against the schema, the external contract.

use std::collections::BTreeSet;

use serde_json::json;

use super::*;

const SCHEMA: &str = include_str!("../../../schema/audit-record.schema.json");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("the schema is JSON")
}

/// What a record of an event holds: its action, outcome and fields.
struct Sample {
    action: Action,
    outcome: Option<Outcome>,
    fields: Map<String, Value>,
}

/// A record's fields with every optional field set; reading them back gives the
/// event again.
fn sample<E: AuditEvent>(event: E) -> Sample {
    let fields = event.fields();
    let read = E::read(&Value::Object(fields.clone())).expect("readable");
    assert_eq!(read.fields(), fields, "{} reads back", event.action());
    Sample {
        action: event.action(),
        outcome: event.outcome(),
        fields,
    }
}

fn sender() -> Sender {
    Sender {
        transport: "tcp".into(),
        address: Some("127.0.0.1:4000".into()),
        local: true,
        uid: Some(1000),
        user_name: Some("alice".into()),
        pid: Some(42),
    }
}

fn claim() -> RefusedClaim {
    RefusedClaim {
        session_id: Some("s".into()),
        action: Some("execute_request".into()),
        msg_id: Some("m".into()),
        fields: Some(vec!["user.name".into()]),
    }
}

/// One fully populated event of every action.
fn samples() -> Vec<Sample> {
    let text = || "t".to_owned();
    let unrecorded = |bypassed| RequestUnrecorded {
        bypassed,
        msg_id: text(),
        refused_msg_type: text(),
        channel: text(),
        reason: text(),
    };
    vec![
        sample(SessionStart {
            notebook_path: Some(text()),
            hub_user: Some(text()),
            hub_server_name: Some(text()),
            kernel_argv: vec![text()],
            kernel_pid: 2,
            proxy_pid: 1,
            proxy_version: text(),
            connection_file: text(),
        }),
        sample(SessionEnd {
            exit_code: Some(1),
            exit_signal: Some(9),
            orphaned: true,
        }),
        sample(ParentExited {}),
        sample(SignalPassed {
            signal: "SIGINT".into(),
        }),
        sample(SignalPassed {
            signal: "SIGTERM".into(),
        }),
        sample(unrecorded(false)),
        sample(unrecorded(true)),
        sample(MessageRejected {
            channel: text(),
            from: text(),
            reason: text(),
            msg_id: Some(text()),
            rejected_msg_type: Some(text()),
            sender: Some(sender()),
            identity_note: Some(IDENTITY_NOTE.into()),
        }),
        sample(RejectionsSuppressed {
            channel: text(),
            from: text(),
            rejected_count: 3,
            reasons: BTreeMap::from([("replayed".into(), 3)]),
            first_rejected_at: text(),
            last_rejected_at: text(),
            reason: text(),
            senders: vec![sender()],
            more_senders: true,
            identity_note: Some(IDENTITY_NOTE.into()),
        }),
        sample(AuditGap {
            lost_records: 1,
            gap_since: text(),
            reason: text(),
        }),
        sample(CollectorStart {
            store: text(),
            socket: text(),
            last_sequence: 1,
            store_created: true,
            torn_record: Some(TornRecord {
                segment: text(),
                offset: 1,
                bytes: 2,
            }),
            version: text(),
            limits: json!({"max_connections": 1}),
            descriptor_limit: 1024,
            hub: Some(HubSettings {
                api_url: text(),
                identity: "required".into(),
                cache_max_age_secs: 60,
                client_certificate: true,
            }),
            console_users: vec![text()],
        }),
        sample(CollectorStop {}),
        sample(LimitExceeded {
            limit: "connections".into(),
            peer: LimitPeer {
                user_id: "1000".into(),
                user_name: Some(text()),
            },
            count: 1,
            bytes: 2,
            setting: 3,
            first_at: text(),
            last_at: text(),
            reason: text(),
        }),
        sample(ForgedRecord {
            reason: text(),
            refused: claim(),
            session_owner: SessionOwner {
                user_id: "1000".into(),
                pid: Some(7),
            },
        }),
        sample(RecordRefused {
            reason: text(),
            refused: claim(),
        }),
        sample(RefusalsSuppressed {
            suppressed_count: 2,
            suppressed: BTreeMap::from([(Action::ForgedRecord, 2)]),
            first_refused_at: Some(text()),
            last_refused_at: Some(text()),
            reason: text(),
        }),
        sample(ForwardConflict {
            store_id: text(),
            target: text(),
            table: "records".into(),
            row_sequence: 3,
            local: text(),
            remote: text(),
            reason: text(),
        }),
        sample(IdentityUnattested {
            refused: true,
            reason: "token_rejected".into(),
            detail: text(),
            policy: "required".into(),
        }),
        sample(ReviewAccess {
            reviewer: ReviewerFields {
                name: "auditor".into(),
                scopes: vec!["custom:jupyter-audit:read".into()],
            },
            view: "output".into(),
            session_id: Some(text()),
            user: Some(text()),
            query: Some(text()),
            sequence: Some(7),
            outputs: Some(true),
        }),
        sample(ReviewMark {
            reviewer: ReviewerFields {
                name: "auditor".into(),
                scopes: vec!["custom:jupyter-audit:read".into()],
            },
            view: MARK_VIEW.into(),
            session_id: text(),
            mark: "flagged".into(),
            note: text(),
        }),
        sample(IdentityUnattested {
            refused: false,
            reason: "missing_token".into(),
            detail: text(),
            policy: "preferred".into(),
        }),
    ]
}

/// The schema at `node`, following a `$ref` into `$defs`.
fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/$defs/");
            resolve(schema, &schema["$defs"][name])
        }
        None => node,
    }
}

/// Asserts that every key of `fields`, and of the objects inside it that the schema
/// describes field by field, is declared in `node`.
fn assert_declared(schema: &Value, node: &Value, fields: &Map<String, Value>, path: &str) {
    let node = resolve(schema, node);
    let declared = node["properties"].as_object();
    for (key, value) in fields {
        let Some(declared) = declared else {
            return; // a map of counts or settings: open by design
        };
        let property = declared
            .get(key)
            .unwrap_or_else(|| panic!("{path}.{key} is written but not in the schema"));
        let property = resolve(schema, property);
        match value {
            Value::Object(inner) if property.get("properties").is_some() => {
                assert_declared(schema, property, inner, &format!("{path}.{key}"));
            }
            Value::Array(items) => {
                for item in items.iter().filter_map(Value::as_object) {
                    assert_declared(schema, &property["items"], item, &format!("{path}.{key}[]"));
                }
            }
            _ => {}
        }
    }
}

/// The actions an `if` of the schema's `allOf` selects, and the fields its `then`
/// requires of `jupyter`, `collector` or `review` (and `event.outcome`'s const, as
/// `outcome=<value>`).
fn required_by_action(schema: &Value) -> Vec<(String, Vec<String>)> {
    let mut rules = Vec::new();
    for rule in schema["allOf"].as_array().expect("allOf") {
        let condition = resolve(schema, &rule["if"]);
        let action = &condition["properties"]["event"]["properties"]["action"];
        let actions: Vec<&Value> = match (&action["const"], &action["enum"]) {
            (Value::String(_), _) => vec![&action["const"]],
            (_, Value::Array(names)) => names.iter().collect(),
            _ => continue,
        };
        let then = &rule["then"]["properties"];
        let required = [
            &then["jupyter"]["required"],
            &then["collector"]["required"],
            &then["review"]["required"],
        ];
        let mut required: Vec<String> = required
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        if let Some(outcome) = then["event"]["properties"]["outcome"]["const"].as_str() {
            required.push(format!("outcome={outcome}"));
        }
        for action in actions.into_iter().filter_map(Value::as_str) {
            rules.push((action.to_owned(), required.clone()));
        }
    }
    rules
}

#[test]
fn action_names_are_their_serde_names() {
    for action in Action::ALL {
        assert_eq!(json!(action), json!(action.as_str()));
        assert_eq!(Action::from_name(action.as_str()), Some(action));
        assert_eq!(action.to_string(), action.as_str());
    }
    assert_eq!(Action::from_name("execute_request"), None);
    for outcome in [Outcome::Success, Outcome::Failure] {
        assert_eq!(json!(outcome), json!(outcome.as_str()));
        assert_eq!(Outcome::from_name(outcome.as_str()), Some(outcome));
    }
}

#[test]
fn the_schema_lists_exactly_these_actions() {
    let schema = schema();
    let listed: BTreeSet<&str> = schema["$defs"]["event_action"]["enum"]
        .as_array()
        .expect("an enum of actions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let ours: BTreeSet<&str> = Action::ALL.iter().map(|action| action.as_str()).collect();
    assert_eq!(listed, ours);
    // The collector's records are told apart by their action.
    let collector_record = &schema["oneOf"][1]["properties"]["event"]["properties"]["action"];
    let pattern =
        regex::Regex::new(collector_record["pattern"].as_str().expect("pattern")).expect("a regex");
    for action in Action::ALL {
        assert_eq!(
            pattern.is_match(action.as_str()),
            action.is_collectors(),
            "{action}"
        );
    }
}

#[test]
fn every_field_written_is_in_the_schema_and_every_required_one_is_written() {
    let schema = schema();
    let samples = samples();
    let covered: BTreeSet<Action> = samples.iter().map(|sample| sample.action).collect();
    assert_eq!(covered.len(), Action::ALL.len(), "a sample of every action");
    for Sample { action, fields, .. } in &samples {
        let object = action.fields_object();
        let node = &schema["properties"][object];
        assert_declared(&schema, node, fields, &format!("{action}: {object}"));
    }
    let rules = required_by_action(&schema);
    assert!(rules.len() > 10, "the schema's rules were found");
    for (name, required) in rules {
        let Some(sample) = samples.iter().find(|sample| sample.action.as_str() == name) else {
            continue; // a message type
        };
        for field in required {
            let written = match field.strip_prefix("outcome=") {
                Some(outcome) => sample.outcome == Outcome::from_name(outcome),
                None => sample.fields.contains_key(&field),
            };
            assert!(written, "{} must write {field}", sample.action);
        }
    }
}
