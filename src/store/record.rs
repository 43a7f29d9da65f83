//! One stored line: how a record is numbered, chained and framed, and how a verifier
//! takes the frame apart again.
//!
//! The store serialises the record (with `event.sequence` set and no top-level `chain`)
//! to compact JSON bytes `B`, then writes `B` without its final `}`, followed by
//! `,"chain":{"prev":"<64 hex>","hash":"<64 hex>"}}` and `\n`, where
//! `hash = SHA-256(prev as 32 raw bytes || B)`. The suffix has a fixed length, so `B` is
//! recovered exactly by cutting it off and putting `}` back: the hash never depends on
//! how a JSON library orders or formats keys. `B` comes from a decoded record
//! ([`prepare`]) or from parts some of which are JSON text kept as it came
//! ([`prepare_parts`], the collector's path for a sender's values); either way it is
//! one line of JSON, and `verify` hashes it as it stands.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A SHA-256 chain hash.
pub type ChainHash = [u8; 32];

/// The `prev` of the first record of a store.
pub const GENESIS: ChainHash = [0; 32];

const SUFFIX_HEAD: &[u8] = b",\"chain\":{\"prev\":\"";
const SUFFIX_MIDDLE: &[u8] = b"\",\"hash\":\"";
const SUFFIX_TAIL: &[u8] = b"\"}}";
const HEX_LEN: usize = 64;
/// Length of the chain suffix that follows `B` minus its closing brace.
pub const SUFFIX_LEN: usize =
    SUFFIX_HEAD.len() + HEX_LEN + SUFFIX_MIDDLE.len() + HEX_LEN + SUFFIX_TAIL.len();

/// `SHA-256(prev || body)`.
pub fn chain_hash(prev: &ChainHash, body: &[u8]) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(body);
    hasher.finalize().into()
}

/// Checks that `record` can be stored: its `event`, when present, must be an object.
fn check_record(record: &Map<String, Value>) -> Result<(), String> {
    match record.get("event") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(format!("\"event\" must be an object, not {other}")),
    }
}

/// A record turned into its stored line.
#[cfg(test)]
#[derive(Debug)]
pub struct Sealed {
    /// The full line, `\n` included.
    pub line: Vec<u8>,
    pub hash: ChainHash,
}

/// A record serialised ahead of the writer thread: its body `B` with the place of the
/// digits of `event.sequence` left open, since only the writer knows the number.
/// Serialising is most of a record's cost; done in the submitter's task, it runs
/// beside the writer instead of inside it.
#[derive(Debug)]
pub struct Prepared {
    /// `B` without the sequence digits: `…"event":{…"sequence":` + `…}`.
    bytes: Vec<u8>,
    /// Where the digits go.
    sequence_at: usize,
}

/// Checks `record` and serialises it for [`seal_into`]: compact JSON, keys in the
/// order serde_json's map keeps them (sorted), `event.sequence` among `event`'s keys
/// where that order puts it, a top-level `chain` dropped.
pub fn prepare(mut record: Map<String, Value>) -> Result<Prepared, String> {
    check_record(&record)?;
    record.remove("chain");
    let mut event = match record.remove("event") {
        Some(Value::Object(event)) => event,
        _ => Map::new(),
    };
    event.remove("sequence");
    let mut out = JsonObject::new(Vec::with_capacity(512));
    let sequence_at = out.entries_around(&record, "event", |out| {
        out.key("event")?;
        let mut inner = JsonObject::new(std::mem::take(&mut out.bytes));
        let sequence_at = inner.entries_around(&event, "sequence", |inner| {
            inner.key("sequence")?;
            Ok(inner.bytes.len())
        })?;
        out.bytes = inner.finish();
        Ok(sequence_at)
    })?;
    Ok(Prepared {
        bytes: out.finish(),
        sequence_at,
    })
}

/// A value of a record assembled from parts ([`prepare_parts`]): decoded, or JSON
/// text kept exactly as it came, or an object of further parts.
#[derive(Debug)]
pub enum Part<'a> {
    Value(&'a Value),
    /// One JSON value, compact enough to sit on one line (no `\n` or `\r`).
    Raw(&'a str),
    Object(Vec<(&'a str, Part<'a>)>),
}

/// Assembles a record body from parts without decoding or re-encoding raw parts: keys
/// sorted at every level written here (as [`prepare`] sorts them), `event.sequence`
/// added to `event` (which must be an [`Part::Object`]). Duplicate keys and raw text
/// that would break the line are refused: the stored line must mean one thing.
pub fn prepare_parts(mut top: Vec<(&str, Part<'_>)>) -> Result<Prepared, String> {
    let mut out = Vec::with_capacity(512 + raw_len(&top));
    let mut sequence_at = None;
    write_parts(&mut out, &mut top, true, &mut sequence_at)?;
    let sequence_at = sequence_at.ok_or("the record has no event object")?;
    Ok(Prepared {
        bytes: out,
        sequence_at,
    })
}

fn raw_len(parts: &[(&str, Part<'_>)]) -> usize {
    parts
        .iter()
        .map(|(_, part)| match part {
            Part::Raw(text) => text.len(),
            Part::Object(inner) => raw_len(inner),
            Part::Value(_) => 0,
        })
        .sum()
}

/// Writes `parts` as one object; at the top, the `event` object gets the sequence slot.
fn write_parts(
    out: &mut Vec<u8>,
    parts: &mut [(&str, Part<'_>)],
    top: bool,
    sequence_at: &mut Option<usize>,
) -> Result<(), String> {
    parts.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if let Some(pair) = parts.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(format!("duplicate key {:?}", pair[0].0));
    }
    let mut object = JsonObject::new(std::mem::take(out));
    for (key, part) in parts.iter_mut() {
        let is_event = top && *key == "event";
        if is_event && key_is_sequence_free(part).is_err() {
            return Err("\"event\" must be an object without a sequence".into());
        }
        object.key(key)?;
        match part {
            Part::Value(value) => {
                serde_json::to_writer(&mut object.bytes, value).map_err(|e| e.to_string())?
            }
            Part::Raw(text) => {
                if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some() {
                    return Err(format!("the value of {key:?} is not on one line"));
                }
                object.bytes.extend_from_slice(text.as_bytes());
            }
            Part::Object(inner) if is_event => {
                inner.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let mut bytes = std::mem::take(&mut object.bytes);
                let split = inner.partition_point(|(k, _)| *k < "sequence");
                let (before, after) = inner.split_at_mut(split);
                write_parts(&mut bytes, before, false, sequence_at)?;
                // `{…}` of the keys before "sequence": reopen it for the slot.
                bytes.pop();
                if !before.is_empty() {
                    bytes.push(b',');
                }
                bytes.extend_from_slice(b"\"sequence\":");
                *sequence_at = Some(bytes.len());
                let mut rest = Vec::new();
                write_parts(&mut rest, after, false, sequence_at)?;
                if !after.is_empty() {
                    bytes.push(b',');
                    bytes.extend_from_slice(&rest[1..]);
                } else {
                    bytes.push(b'}');
                }
                object.bytes = bytes;
            }
            Part::Object(inner) => {
                let mut bytes = std::mem::take(&mut object.bytes);
                write_parts(&mut bytes, inner, false, sequence_at)?;
                object.bytes = bytes;
            }
        }
    }
    *out = object.finish();
    Ok(())
}

fn key_is_sequence_free(part: &Part<'_>) -> Result<(), ()> {
    match part {
        Part::Object(inner) if inner.iter().all(|(k, _)| *k != "sequence") => Ok(()),
        _ => Err(()),
    }
}

/// Compact JSON object writer over a byte buffer.
struct JsonObject {
    bytes: Vec<u8>,
    first: bool,
}

impl JsonObject {
    fn new(mut bytes: Vec<u8>) -> Self {
        bytes.push(b'{');
        JsonObject { bytes, first: true }
    }

    fn key(&mut self, key: &str) -> Result<(), String> {
        if !self.first {
            self.bytes.push(b',');
        }
        self.first = false;
        serde_json::to_writer(&mut self.bytes, key).map_err(|e| e.to_string())?;
        self.bytes.push(b':');
        Ok(())
    }

    fn entry(&mut self, key: &str, value: &Value) -> Result<(), String> {
        self.key(key)?;
        serde_json::to_writer(&mut self.bytes, value).map_err(|e| e.to_string())
    }

    /// Writes the entries of `map` (which has no `key`), calling `middle` where the
    /// sorted order puts `key`; returns what `middle` returned.
    fn entries_around<T>(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        middle: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut entries = map.iter().peekable();
        while let Some((k, value)) = entries.next_if(|(k, _)| k.as_str() < key) {
            self.entry(k, value)?;
        }
        let result = middle(self)?;
        for (k, value) in entries {
            self.entry(k, value)?;
        }
        Ok(result)
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.push(b'}');
        self.bytes
    }
}

/// Numbers `prepared` with `sequence`, chains it to `prev`, appends its line to `out`
/// and returns its hash.
pub fn seal_into(
    prepared: &Prepared,
    sequence: u64,
    prev: &ChainHash,
    out: &mut Vec<u8>,
) -> ChainHash {
    let digits = sequence.to_string();
    let (before, after) = prepared.bytes.split_at(prepared.sequence_at);
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(before);
    hasher.update(digits.as_bytes());
    hasher.update(after);
    let hash: ChainHash = hasher.finalize().into();
    out.reserve(prepared.bytes.len() + digits.len() + SUFFIX_LEN + 1);
    out.extend_from_slice(before);
    out.extend_from_slice(digits.as_bytes());
    // Without the closing brace: `after` ends with the record's `}`.
    out.extend_from_slice(&after[..after.len() - 1]);
    out.extend_from_slice(SUFFIX_HEAD);
    out.extend_from_slice(hex::encode(prev).as_bytes());
    out.extend_from_slice(SUFFIX_MIDDLE);
    out.extend_from_slice(hex::encode(hash).as_bytes());
    out.extend_from_slice(SUFFIX_TAIL);
    out.push(b'\n');
    hash
}

/// Numbers `record` with `sequence`, chains it to `prev` and frames it as one line.
#[cfg(test)]
pub fn seal(record: Map<String, Value>, sequence: u64, prev: &ChainHash) -> Result<Sealed, String> {
    let prepared = prepare(record)?;
    let mut line = Vec::new();
    let hash = seal_into(&prepared, sequence, prev, &mut line);
    Ok(Sealed { line, hash })
}

/// A stored line taken apart (the line without its `\n`).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsealed {
    /// `B`: the bytes the hash covers.
    pub body: Vec<u8>,
    pub prev: ChainHash,
    pub hash: ChainHash,
}

impl Unsealed {
    /// Whether `hash` is the SHA-256 of `prev || body`.
    pub fn hash_matches(&self) -> bool {
        chain_hash(&self.prev, &self.body) == self.hash
    }
}

fn lower_hex_32(text: &[u8]) -> Option<ChainHash> {
    if !text.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Takes a stored line (without `\n`) apart; the error says what is not as written.
pub fn unseal(line: &[u8]) -> Result<Unsealed, &'static str> {
    if line.len() < SUFFIX_LEN + 2 || line.first() != Some(&b'{') {
        return Err("not a stored record (too short or not a JSON object)");
    }
    let (head, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let (start, rest) = suffix.split_at(SUFFIX_HEAD.len());
    let (prev, rest) = rest.split_at(HEX_LEN);
    let (middle, rest) = rest.split_at(SUFFIX_MIDDLE.len());
    let (hash, tail) = rest.split_at(HEX_LEN);
    if start != SUFFIX_HEAD || middle != SUFFIX_MIDDLE || tail != SUFFIX_TAIL {
        return Err("the line does not end with the chain fields");
    }
    let prev = lower_hex_32(prev).ok_or("chain.prev is not 64 lowercase hex digits")?;
    let hash = lower_hex_32(hash).ok_or("chain.hash is not 64 lowercase hex digits")?;
    let mut body = Vec::with_capacity(head.len() + 1);
    body.extend_from_slice(head);
    body.push(b'}');
    Ok(Unsealed { body, prev, hash })
}

/// `event.sequence` of a parsed record.
pub fn sequence_of(value: &Value) -> Option<u64> {
    value.get("event")?.get("sequence")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn sealed_line_is_json_with_sequence_and_chain() {
        let sealed = seal(
            record(json!({"event": {"action": "stream", "sequence": 99}, "chain": 1})),
            7,
            &GENESIS,
        )
        .unwrap();
        assert_eq!(sealed.line.last(), Some(&b'\n'));
        let text = std::str::from_utf8(&sealed.line[..sealed.line.len() - 1]).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["event"]["sequence"], 7);
        assert_eq!(value["event"]["action"], "stream");
        assert_eq!(value["chain"]["prev"], "0".repeat(64));
        assert_eq!(value["chain"]["hash"], hex::encode(sealed.hash));
        assert_eq!(sequence_of(&value), Some(7));
    }

    #[test]
    fn unseal_recovers_the_hashed_bytes_exactly() {
        let prev = chain_hash(&GENESIS, b"{}");
        let sealed = seal(record(json!({"b": [1, "x\n"], "a": {}})), 1, &prev).unwrap();
        let unsealed = unseal(&sealed.line[..sealed.line.len() - 1]).unwrap();
        assert_eq!(unsealed.prev, prev);
        assert_eq!(unsealed.hash, sealed.hash);
        assert!(unsealed.hash_matches());
        let expected = br#"{"a":{},"b":[1,"x\n"],"event":{"sequence":1}}"#;
        assert_eq!(unsealed.body, expected);
    }

    #[test]
    fn prepared_bodies_are_serde_json_bytes() {
        // The body is what serde_json makes of the record with its sequence: the
        // splice must not change a byte, wherever "sequence" falls among the keys.
        for value in [
            json!({}),
            json!({"event": {}}),
            json!({"a": 1, "z": [null, "é\u{1}\"\\"]}),
            json!({"event": {"action": "x", "zone": 1, "sequence": 5}, "f": {"g": 2.5}}),
            json!({"event": {"severity": 1, "sf": true}, "@timestamp": "t", "user": {"id": 0}}),
            json!({"event": {"a": {"sequence": 3}, "t": "}\""}, "eventually": 1, "chain": 2}),
        ] {
            let mut expected = record(value.clone());
            expected.remove("chain");
            let event = expected.entry("event").or_insert_with(|| json!({}));
            event["sequence"] = json!(1234567);
            let expected = serde_json::to_vec(&expected).unwrap();
            let sealed = seal(record(value), 1234567, &GENESIS).unwrap();
            let unsealed = unseal(&sealed.line[..sealed.line.len() - 1]).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&unsealed.body),
                String::from_utf8_lossy(&expected)
            );
            assert!(unsealed.hash_matches());
            assert_eq!(unsealed.hash, sealed.hash);
        }
    }

    #[test]
    fn parts_make_the_body_prepare_makes() {
        let raw = r#"{"z":[1,"x\n"],"a":null}"#;
        let text = json!("t");
        let prepared = prepare_parts(vec![
            ("user", Part::Value(&text)),
            (
                "event",
                Part::Object(vec![
                    ("zone", Part::Value(&text)),
                    ("action", Part::Value(&text)),
                ]),
            ),
            (
                "jupyter",
                Part::Object(vec![("b", Part::Raw(raw)), ("a", Part::Raw("1"))]),
            ),
        ])
        .unwrap();
        let mut line = Vec::new();
        let hash = seal_into(&prepared, 12, &GENESIS, &mut line);
        let unsealed = unseal(&line[..line.len() - 1]).unwrap();
        assert_eq!(unsealed.hash, hash);
        assert!(unsealed.hash_matches());
        let expected = r#"{"event":{"action":"t","sequence":12,"zone":"t"},"jupyter":{"a":1,"b":{"z":[1,"x\n"],"a":null}},"user":"t"}"#;
        assert_eq!(String::from_utf8_lossy(&unsealed.body), expected);
    }

    #[test]
    fn parts_that_would_not_read_as_one_record_on_one_line_are_refused() {
        let event = || ("event", Part::Object(vec![]));
        assert!(prepare_parts(vec![event(), ("a", Part::Raw("[1, \"\\n\"]"))]).is_ok());
        assert!(prepare_parts(vec![event(), ("a", Part::Raw("[1,\n2]"))]).is_err());
        assert!(prepare_parts(vec![event(), ("a", Part::Raw("[1,\r2]"))]).is_err());
        let twice = vec![event(), ("a", Part::Raw("1")), ("a", Part::Raw("2"))];
        assert!(prepare_parts(twice).is_err());
        assert!(prepare_parts(vec![("a", Part::Raw("1"))]).is_err());
    }

    #[test]
    fn event_that_is_not_an_object_is_refused() {
        assert!(seal(record(json!({"event": "x"})), 1, &GENESIS).is_err());
    }

    #[test]
    fn damaged_frames_are_refused() {
        let sealed = seal(record(json!({"a": 1})), 1, &GENESIS).unwrap();
        let line = &sealed.line[..sealed.line.len() - 1];
        assert!(unseal(b"{}").is_err());
        let mut upper = line.to_vec();
        let at = upper.len() - 10;
        upper[at] = b'A';
        assert!(unseal(&upper).is_err());
        let mut changed = line.to_vec();
        changed[2] ^= 1;
        assert!(!unseal(&changed).unwrap().hash_matches());
    }
}
