//! A proxy's frame as the collector reads it: the record's `jupyter` values are checked
//! to be JSON a reader can parse but kept as the text that came, so that storing a
//! record does not decode and re-encode its (often megabyte-sized) content.
//!
//! Every value is still checked as strictly as parsing it into a `serde_json::Value`
//! would (UTF-8, escapes, lone surrogates, numbers in range, nesting depth): a frame
//! that fails is malformed, as before. Keys sent twice at the levels the collector
//! checks and writes (the record, `event`, `jupyter`) are noted for
//! [`fields::check`](super::fields::check) to refuse: readers that keep the first and
//! readers that keep the last would read different records. A key sent twice deeper
//! inside a `jupyter` value, or a value spread over several lines, makes that one value
//! decoded and re-encoded, as every value was before: the last duplicate wins, as
//! serde_json and Python's json read it, and the stored line shows only that one.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A frame from a proxy, read by the collector.
#[derive(Debug)]
pub enum SenderFrame {
    Hello {
        version: u32,
    },
    Record {
        id: u64,
        record: SenderRecord,
        urgent: bool,
    },
}

/// What a top-level field held.
#[derive(Debug, Default)]
pub enum Slot<T> {
    #[default]
    Missing,
    NotObject,
    Object(T),
}

/// A sender's record: its `event` decoded (a few short fields), its `jupyter` values
/// as checked JSON text, and its `review` object decoded (the review console's records
/// only: a few short fields).
#[derive(Debug, Default)]
pub struct SenderRecord {
    /// Top-level keys other than `event`, `jupyter` and `review` (none is the sender's
    /// to write).
    pub other_keys: Vec<String>,
    pub event: Slot<Map<String, Value>>,
    pub jupyter: Slot<BTreeMap<String, Box<RawValue>>>,
    /// Only the review console may write one ([`fields`](super::fields)).
    pub review: Slot<Map<String, Value>>,
    /// Keys sent more than once, as dotted paths.
    pub duplicates: Vec<String>,
}

impl SenderRecord {
    /// Reads a record from its JSON text (tests, fuzzing, benchmarks).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `event.<key>` when it is a string.
    pub fn event_str(&self, key: &str) -> Option<&str> {
        match &self.event {
            Slot::Object(event) => event.get(key).and_then(Value::as_str),
            _ => None,
        }
    }

    /// `jupyter.<key>` when it is a string.
    pub fn jupyter_str(&self, key: &str) -> Option<String> {
        match &self.jupyter {
            Slot::Object(jupyter) => serde_json::from_str(jupyter.get(key)?.get()).ok(),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for SenderFrame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = SenderFrame;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a frame object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SenderFrame, A::Error> {
        let mut kind: Option<String> = None;
        let mut id: Option<u64> = None;
        let mut urgent: Option<bool> = None;
        let mut version: Option<u32> = None;
        let mut record: Option<SenderRecord> = None;
        fn once<T, E: de::Error>(
            slot: &mut Option<T>,
            value: T,
            name: &'static str,
        ) -> Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::duplicate_field(name)),
                None => Ok(()),
            }
        }
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "type" => once(&mut kind, map.next_value()?, "type")?,
                "id" => once(&mut id, map.next_value()?, "id")?,
                "urgent" => once(&mut urgent, map.next_value()?, "urgent")?,
                "version" => once(&mut version, map.next_value()?, "version")?,
                "record" => once(&mut record, map.next_value()?, "record")?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match kind.as_deref() {
            Some("hello") => Ok(SenderFrame::Hello {
                version: version.ok_or_else(|| de::Error::missing_field("version"))?,
            }),
            Some("record") => Ok(SenderFrame::Record {
                id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                record: record.ok_or_else(|| de::Error::missing_field("record"))?,
                urgent: urgent.unwrap_or(false),
            }),
            Some(other) => Err(de::Error::unknown_variant(other, &["hello", "record"])),
            None => Err(de::Error::missing_field("type")),
        }
    }
}

impl<'de> Deserialize<'de> for SenderRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = SenderRecord;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SenderRecord, A::Error> {
        let mut record = SenderRecord::default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let again = seen.contains(&key);
            if again {
                record.duplicates.push(key.clone());
            }
            match key.as_str() {
                "event" => {
                    record.event = map
                        .next_value_seed(FieldsSeed::<Value>::new("event", &mut record.duplicates))?
                        .map(|fields| fields.into_iter().collect());
                }
                "review" => {
                    record.review = map
                        .next_value_seed(FieldsSeed::<Value>::new(
                            "review",
                            &mut record.duplicates,
                        ))?
                        .map(|fields| fields.into_iter().collect());
                }
                "jupyter" => {
                    record.jupyter = map
                        .next_value_seed(FieldsSeed::<CheckedRaw>::new(
                            "jupyter",
                            &mut record.duplicates,
                        ))?
                        .map(|fields| fields.into_iter().map(|(k, v)| (k, v.0)).collect());
                }
                _ => {
                    // Refused whatever it holds; checked as JSON all the same.
                    map.next_value::<Value>()?;
                    if !again {
                        record.other_keys.push(key.clone());
                    }
                }
            }
            if !again {
                seen.push(key);
            }
        }
        Ok(record)
    }
}

impl<T> Slot<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Slot<U> {
        match self {
            Slot::Missing => Slot::Missing,
            Slot::NotObject => Slot::NotObject,
            Slot::Object(inner) => Slot::Object(f(inner)),
        }
    }
}

/// Reads an object's fields as `V`s (noting keys sent twice under `path`), or notes
/// that the value is no object.
struct FieldsSeed<'a, V> {
    path: &'static str,
    duplicates: &'a mut Vec<String>,
    value: PhantomData<V>,
}

impl<'a, V> FieldsSeed<'a, V> {
    fn new(path: &'static str, duplicates: &'a mut Vec<String>) -> Self {
        FieldsSeed {
            path,
            duplicates,
            value: PhantomData,
        }
    }
}

impl<'de, V: Deserialize<'de>> DeserializeSeed<'de> for FieldsSeed<'_, V> {
    type Value = Slot<BTreeMap<String, V>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! not_an_object {
    ($($method:ident: $type:ty),*) => {
        $(fn $method<E: de::Error>(self, _: $type) -> Result<Self::Value, E> {
            Ok(Slot::NotObject)
        })*
    };
}

impl<'de, V: Deserialize<'de>> Visitor<'de> for FieldsSeed<'_, V> {
    type Value = Slot<BTreeMap<String, V>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    not_an_object!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Slot::NotObject)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Slot::NotObject)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<V>()?;
            match fields.entry(key) {
                Entry::Occupied(mut entry) => {
                    self.duplicates
                        .push(format!("{}.{}", self.path, entry.key()));
                    entry.insert(value);
                }
                Entry::Vacant(entry) => {
                    entry.insert(value);
                }
            }
        }
        Ok(Slot::Object(fields))
    }
}

/// A `jupyter` value as the text that came, checked to be what a reader can parse, or
/// re-encoded when it had to be (see the module doc).
struct CheckedRaw(Box<RawValue>);

impl<'de> Deserialize<'de> for CheckedRaw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        checked(raw).map(CheckedRaw).map_err(de::Error::custom)
    }
}

fn checked(raw: Box<RawValue>) -> Result<Box<RawValue>, serde_json::Error> {
    let Nested { rewrite } = serde_json::from_str(raw.get())?;
    if !rewrite && memchr::memchr2(b'\n', b'\r', raw.get().as_bytes()).is_none() {
        return Ok(raw);
    }
    let value: Value = serde_json::from_str(raw.get())?;
    RawValue::from_string(serde_json::to_string(&value)?)
}

/// A value walked as strictly as `Value` parses it, without building it: whether it
/// holds an object with a key sent twice (then it is to be re-encoded).
struct Nested {
    rewrite: bool,
}

/// Containers a `jupyter` value may nest: what parsing the whole frame into a `Value`
/// allowed (serde_json's 127, less the frame, the record and `jupyter`), so a stored line
/// stays within what a reader parses.
const JUPYTER_VALUE_DEPTH: usize = 124;

impl<'de> Deserialize<'de> for Nested {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        NestedVisitor {
            depth_left: JUPYTER_VALUE_DEPTH,
        }
        .deserialize(deserializer)
    }
}

struct NestedVisitor {
    depth_left: usize,
}

impl NestedVisitor {
    fn inner<E: de::Error>(&self) -> Result<NestedVisitor, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(NestedVisitor { depth_left }),
            None => Err(E::custom("recursion limit exceeded")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for NestedVisitor {
    type Value = Nested;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Nested, D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! plain {
    ($($method:ident: $type:ty),*) => {
        $(fn $method<E: de::Error>(self, _: $type) -> Result<Nested, E> {
            Ok(Nested { rewrite: false })
        })*
    };
}

impl<'de> Visitor<'de> for NestedVisitor {
    type Value = Nested;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    plain!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Nested, E> {
        Ok(Nested { rewrite: false })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Nested, A::Error> {
        let inner = self.inner()?;
        let mut rewrite = false;
        while let Some(Nested { rewrite: more }) = seq.next_element_seed(NestedVisitor {
            depth_left: inner.depth_left,
        })? {
            rewrite |= more;
        }
        Ok(Nested { rewrite })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Nested, A::Error> {
        let inner = self.inner()?;
        let mut rewrite = false;
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            keys.push(key);
            let Nested { rewrite: more } = map.next_value_seed(NestedVisitor {
                depth_left: inner.depth_left,
            })?;
            rewrite |= more;
        }
        if !rewrite && keys.len() > 1 {
            keys.sort_unstable();
            rewrite = keys.windows(2).any(|pair| pair[0] == pair[1]);
        }
        Ok(Nested { rewrite })
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(key)))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(key.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::protocol::ToCollector;

    #[test]
    fn a_frame_nests_as_deep_as_before_and_no_deeper() {
        // Deeper frames were malformed when the frame was parsed into a Value; a
        // stored line nested deeper than serde_json reads would be lost to readers.
        for depth in 118..132 {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let value = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let frame = format!(
                    r#"{{"type":"record","id":1,"record":{{"event":{{"action":"a"}},"jupyter":{{"session_id":"s","v":{value}}}}}}}"#
                );
                let before = serde_json::from_str::<ToCollector>(&frame).is_ok();
                let now = serde_json::from_str::<SenderFrame>(&frame).is_ok();
                assert_eq!(now, before, "depth {depth} of {open}");
            }
        }
    }
}
