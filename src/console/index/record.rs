//! The fields of a stored record that the index reads for every record, parsed straight
//! from the stored line into a small struct that borrows its strings from the line.
//!
//! Parsing into `serde_json::Value` cost most of a catch-up (a map and a string per
//! field, then a lookup by name per read); this reads the same fields with no map and,
//! for strings without escapes, no allocation. It is as lenient as reading a `Value`: a
//! field of an unexpected type reads as missing, not as an error. A line it cannot read
//! (a duplicated key) is read through a `Value` instead ([`LeanRecord::of_value`]), which
//! is also how the rare records that need more fields are read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::audit::events::Action;
use crate::review::sessions::SessionKey;

/// A JSON value the index reads as a string, a number or a boolean; anything else
/// (null, an object, an array, a missing field) is `Other`.
#[derive(Debug, Default)]
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    #[default]
    Other,
}

impl Scalar<'_> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(text) => Some(text),
            _ => None,
        }
    }

    /// As `Value::as_u64`: a non-negative integer.
    pub(super) fn as_u64(&self) -> Option<u64> {
        match self {
            Scalar::Unsigned(n) => Some(*n),
            Scalar::Signed(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// As `Value::as_f64`: any number.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Unsigned(n) => Some(*n as f64),
            Scalar::Signed(n) => Some(*n as f64),
            Scalar::Float(n) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn is_true(&self) -> bool {
        matches!(self, Scalar::Bool(true))
    }

    fn of_value(value: Option<&Value>) -> Scalar<'_> {
        match value {
            Some(Value::String(text)) => Scalar::Str(Cow::Borrowed(text)),
            Some(Value::Bool(flag)) => Scalar::Bool(*flag),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Scalar::Unsigned)
                .or_else(|| n.as_i64().map(Scalar::Signed))
                .or_else(|| n.as_f64().map(Scalar::Float))
                .unwrap_or_default(),
            _ => Scalar::Other,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(text)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Unsigned(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Signed(n))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(n))
            }
            fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(flag))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// An object of a record read as `T`; any other JSON value reads as `T::default()`.
#[derive(Debug, Default)]
pub(super) struct Nested<T>(pub(super) T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Nested<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for Visit<T> {
            type Value = Nested<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Nested)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Nested(T::default()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Nested(T::default()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Nested(T::default()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Nested(T::default()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Nested(T::default()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Nested(T::default()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Nested(T::default()))
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct Event<'a> {
    #[serde(borrow)]
    pub(super) action: Scalar<'a>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct Host<'a> {
    #[serde(borrow)]
    pub(super) name: Scalar<'a>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct Id<'a> {
    #[serde(borrow)]
    pub(super) id: Scalar<'a>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct Process<'a> {
    #[serde(borrow)]
    pub(super) pid: Scalar<'a>,
    #[serde(borrow)]
    pub(super) user: Nested<Id<'a>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct User<'a> {
    #[serde(borrow)]
    pub(super) name: Scalar<'a>,
    #[serde(borrow)]
    pub(super) id: Scalar<'a>,
    #[serde(borrow)]
    pub(super) verified_by: Scalar<'a>,
}

/// The `jupyter.*` fields every record may need (those of `session_start` and
/// `session_end` are read from the whole record).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct Jupyter<'a> {
    #[serde(borrow)]
    pub(super) session_id: Scalar<'a>,
    #[serde(borrow)]
    pub(super) kernel_id: Scalar<'a>,
    #[serde(borrow)]
    pub(super) kernel_name: Scalar<'a>,
    #[serde(borrow)]
    pub(super) msg_id: Scalar<'a>,
    #[serde(borrow)]
    pub(super) parent_msg_id: Scalar<'a>,
    #[serde(borrow)]
    pub(super) resent: Scalar<'a>,
    /// A string, or the kept head and tail of a long one (`fields::stored_text`).
    pub(super) code: Option<Value>,
    #[serde(borrow)]
    pub(super) execution_count: Scalar<'a>,
    #[serde(borrow)]
    pub(super) status: Scalar<'a>,
    #[serde(borrow)]
    pub(super) duration_ms: Scalar<'a>,
}

/// What the index reads of every record.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub(super) struct LeanRecord<'a> {
    #[serde(rename = "@timestamp", borrow)]
    pub(super) timestamp: Scalar<'a>,
    #[serde(borrow)]
    pub(super) event: Nested<Event<'a>>,
    #[serde(borrow)]
    pub(super) host: Nested<Host<'a>>,
    #[serde(borrow)]
    pub(super) process: Nested<Process<'a>>,
    #[serde(borrow)]
    pub(super) user: Nested<User<'a>>,
    #[serde(borrow)]
    pub(super) jupyter: Nested<Jupyter<'a>>,
}

impl<'a> LeanRecord<'a> {
    /// The same fields, read from a parsed record.
    pub(super) fn of_value(value: &'a Value) -> Self {
        let at = |path: &[&str]| crate::review::fields::at(value, path);
        let scalar = |path: &[&str]| Scalar::of_value(at(path));
        LeanRecord {
            timestamp: scalar(&["@timestamp"]),
            event: Nested(Event {
                action: scalar(&["event", "action"]),
            }),
            host: Nested(Host {
                name: scalar(&["host", "name"]),
            }),
            process: Nested(Process {
                pid: scalar(&["process", "pid"]),
                user: Nested(Id {
                    id: scalar(&["process", "user", "id"]),
                }),
            }),
            user: Nested(User {
                name: scalar(&["user", "name"]),
                id: scalar(&["user", "id"]),
                verified_by: scalar(&["user", "verified_by"]),
            }),
            jupyter: Nested(Jupyter {
                session_id: scalar(&["jupyter", "session_id"]),
                kernel_id: scalar(&["jupyter", "kernel_id"]),
                kernel_name: scalar(&["jupyter", "kernel_name"]),
                msg_id: scalar(&["jupyter", "msg_id"]),
                parent_msg_id: scalar(&["jupyter", "parent_msg_id"]),
                resent: scalar(&["jupyter", "resent"]),
                code: at(&["jupyter", "code"])
                    .filter(|code| !code.is_null())
                    .cloned(),
                execution_count: scalar(&["jupyter", "execution_count"]),
                status: scalar(&["jupyter", "status"]),
                duration_ms: scalar(&["jupyter", "duration_ms"]),
            }),
        }
    }

    /// `event.action` (empty when missing), as `fields::action`.
    pub(super) fn action(&self) -> &str {
        self.event.0.action.as_str().unwrap_or_default()
    }

    /// The OS uid, as `fields::os_user_id`.
    pub(super) fn os_user_id(&self) -> Option<&str> {
        self.process
            .0
            .user
            .0
            .id
            .as_str()
            .or_else(|| self.user.0.id.as_str())
    }

    /// The session the record belongs to, as `SessionKey::of`.
    pub(super) fn session_key(&self) -> Option<SessionKey> {
        if Action::from_name(self.action()).is_some_and(Action::is_review) {
            return None;
        }
        Some(SessionKey {
            session_id: self.jupyter.0.session_id.as_str()?.to_owned(),
            user_id: self.os_user_id().unwrap_or_default().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The lean parse of a line reads what the same fields of its `Value` say, for the
    /// usual types and for the odd ones (which read as missing, not as an error).
    #[test]
    fn reads_what_the_value_reads() {
        let lines = [
            json!({"@timestamp": "2026-01-01T00:00:00Z", "event": {"action": "execute_reply"},
                   "host": {"name": "h\u{e9}\"q"}, "process": {"pid": 7, "user": {"id": "1000"}},
                   "user": {"name": "alice", "verified_by": "jupyterhub"},
                   "jupyter": {"session_id": "s", "parent_msg_id": "m", "execution_count": 3,
                               "status": "ok", "duration_ms": 1.5, "resent": true,
                               "code": "print(1)", "content": {"big": [1, 2, 3]}},
                   "chain": {"hash": "x"}}),
            json!({"event": "not an object", "process": [1, 2], "user": null,
                   "jupyter": {"session_id": 5, "execution_count": -1, "duration_ms": 2,
                               "code": {"size": 9, "head": "a", "tail": "b"}}}),
        ];
        for value in lines {
            let line = serde_json::to_vec(&value).unwrap();
            let lean: LeanRecord<'_> = serde_json::from_slice(&line).unwrap();
            let of_value = LeanRecord::of_value(&value);
            for record in [&lean, &of_value] {
                assert_eq!(record.action(), crate::review::fields::action(&value));
                assert_eq!(
                    record.os_user_id(),
                    crate::review::fields::os_user_id(&value)
                );
                assert_eq!(record.session_key(), SessionKey::of(&value));
                let jupyter = &record.jupyter.0;
                assert_eq!(
                    jupyter.execution_count.as_u64(),
                    value["jupyter"]["execution_count"].as_u64()
                );
                assert_eq!(
                    jupyter.duration_ms.as_f64(),
                    value["jupyter"]["duration_ms"].as_f64()
                );
                assert_eq!(record.host.0.name.as_str(), value["host"]["name"].as_str());
                assert_eq!(jupyter.code.as_ref(), value["jupyter"].get("code"));
                assert_eq!(
                    jupyter.resent.is_true(),
                    value["jupyter"]["resent"] == json!(true)
                );
            }
        }
    }
}
