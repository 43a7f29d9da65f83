//! The size policy: text is kept in full up to a cap, beyond it head and tail with the
//! full size and SHA-256; binary MIME types are kept as SHA-256 and size, optionally
//! in full. [`KeptText`] and [`KeptBytes`] are the shapes it writes, which the review
//! tools read back.

use std::borrow::Cow;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A text as the size policy keeps it: whole, or cut to its head and tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeptText<'a> {
    Whole(#[serde(borrow)] Cow<'a, str>),
    Cut(#[serde(borrow)] CutText<'a>),
}

/// A text longer than the cap: its head and tail, and the size and SHA-256 of all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutText<'a> {
    /// Always true: tells a cut text from a JSON value kept as it is.
    pub truncated: bool,
    /// Bytes (UTF-8) of the whole text.
    #[serde(default)]
    pub size: u64,
    #[serde(default, borrow)]
    pub sha256: Cow<'a, str>,
    #[serde(default, borrow)]
    pub head: Cow<'a, str>,
    #[serde(default, borrow)]
    pub tail: Cow<'a, str>,
}

impl<'a> KeptText<'a> {
    /// A stored text, if `value` is one.
    pub fn read(value: &'a Value) -> Option<Self> {
        match Self::deserialize(value).ok()? {
            Self::Cut(cut) if !cut.truncated => None,
            kept => Some(kept),
        }
    }
}

/// Bytes as kept: their size and SHA-256, and the bytes themselves (base64) when kept.
/// Binary MIME values, buffers and content digests have this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptBytes {
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

impl KeptBytes {
    fn of(bytes: &[u8]) -> Self {
        Self {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            base64: None,
        }
    }

    /// Stored bytes, if `value` is some.
    pub fn read(value: &Value) -> Option<Self> {
        Self::deserialize(value).ok()
    }

    /// As a record holds it. The base64, which may be large, is moved, not copied.
    pub fn into_value(mut self) -> Value {
        let base64 = self.base64.take();
        let mut value = to_json(&self);
        if let (Some(base64), Value::Object(fields)) = (base64, &mut value) {
            fields.insert(BASE64_FIELD.into(), Value::String(base64));
        }
        value
    }
}

/// The name serde gives [`KeptBytes::base64`] (a test checks it).
const BASE64_FIELD: &str = "base64";

/// A binary MIME value that is not valid base64: kept as the text it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidBase64<'a> {
    #[serde(borrow)]
    pub invalid_base64: KeptText<'a>,
}

impl<'a> InvalidBase64<'a> {
    /// A stored invalid binary value, if `value` is one.
    pub fn read(value: &'a Value) -> Option<Self> {
        Self::deserialize(value).ok()
    }
}

/// `value` as JSON; the types here always serialise.
fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// How much of each output is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizePolicy {
    /// Text longer than this (in bytes) keeps only its head and tail.
    pub text_cap: usize,
    /// Keep binary outputs (images, …) in full, base64, besides their hash.
    pub keep_binary: bool,
}

impl Default for SizePolicy {
    fn default() -> Self {
        Self {
            text_cap: 1024 * 1024,
            keep_binary: false,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The largest index ≤ `index` on a char boundary of `text`.
fn floor_boundary(text: &str, mut index: usize) -> usize {
    while index > 0 && !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

impl SizePolicy {
    /// A text as kept: the string itself, or an object with head, tail, size and hash.
    pub fn text(&self, text: &str) -> Value {
        if text.len() <= self.text_cap {
            return Value::String(text.to_owned());
        }
        let half = self.text_cap / 2;
        let head_end = floor_boundary(text, half);
        let tail_start = floor_boundary(text, text.len() - half);
        to_json(&CutText {
            truncated: true,
            size: text.len() as u64,
            sha256: Cow::Owned(sha256_hex(text.as_bytes())),
            head: Cow::Borrowed(&text[..head_end]),
            tail: Cow::Borrowed(&text[tail_start..]),
        })
    }

    /// A binary output (base64 in the message) as kept: hash and size of the decoded
    /// bytes, and the base64 itself when the policy keeps binaries.
    pub fn binary(&self, base64_text: &str) -> Value {
        // Jupyter allows line breaks inside base64 image data; most kernels send none,
        // so the data is compacted only when it does not decode as it is.
        let engine = &base64::engine::general_purpose::STANDARD;
        let decoded = match engine.decode(base64_text.as_bytes()) {
            Ok(bytes) => Some((bytes, std::borrow::Cow::Borrowed(base64_text))),
            Err(_) => {
                let compact: String = base64_text.split_ascii_whitespace().collect();
                engine
                    .decode(compact.as_bytes())
                    .ok()
                    .map(|bytes| (bytes, std::borrow::Cow::Owned(compact)))
            }
        };
        let Some((bytes, compact)) = decoded else {
            // Not valid base64: keep it as the text it is.
            let mut invalid = serde_json::Map::new();
            invalid.insert("invalid_base64".into(), self.text(base64_text));
            return Value::Object(invalid);
        };
        let mut kept = KeptBytes::of(&bytes);
        if self.keep_binary {
            kept.base64 = Some(compact.into_owned());
        }
        kept.into_value()
    }

    /// A buffer (the binary frames after a message's content): its size and SHA-256,
    /// and the bytes themselves (base64) when `in_full` or when the policy keeps
    /// binaries. Buffers of frontend requests are kept in full: the kernel acts on them.
    pub fn buffer(&self, bytes: &[u8], in_full: bool) -> Value {
        let mut kept = KeptBytes::of(bytes);
        if in_full || self.keep_binary {
            kept.base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        kept.into_value()
    }

    /// The size and SHA-256 of some bytes, never the bytes themselves.
    pub fn digest(bytes: &[u8]) -> Value {
        KeptBytes::of(bytes).into_value()
    }

    /// A stricter policy for an output whose record would not fit the record budget:
    /// an eighth of the text cap and no binaries kept; None once the cap is zero.
    pub fn tighter(&self) -> Option<Self> {
        (self.text_cap > 0).then_some(Self {
            text_cap: self.text_cap / 8,
            keep_binary: false,
        })
    }

    /// A MIME bundle (`data` of display_data and execute_result) as kept, and how many
    /// of its entries were left out. A bundle keeps at most [`MAX_MIME_ENTRIES`]
    /// entries, those frontends render first, so that padding a bundle with entries no
    /// frontend shows cannot push the one it does show off the record; a MIME type
    /// longer than any real one is kept as its head, size and hash.
    pub fn mime_bundle(&self, bundle: &Value) -> (Value, usize) {
        let Some(entries) = bundle.as_object() else {
            return (self.json(bundle), 0);
        };
        let mut ranked: Vec<(&String, &Value)> = entries.iter().collect();
        if ranked.len() > MAX_MIME_ENTRIES {
            ranked.sort_by_key(|(mime, _)| (display_rank(mime), mime.len()));
        }
        let omitted = ranked.len().saturating_sub(MAX_MIME_ENTRIES);
        let kept = ranked
            .into_iter()
            .take(MAX_MIME_ENTRIES)
            .map(|(mime, value)| {
                let kept = match value {
                    Value::String(text) if is_binary_mime(mime) => self.binary(text),
                    Value::String(text) => self.text(text),
                    other => self.json(other),
                };
                (kept_mime_name(mime), kept)
            })
            .collect();
        (Value::Object(kept), omitted)
    }

    /// Any JSON value, capped by its serialised size.
    pub fn json(&self, value: &Value) -> Value {
        let text = value.to_string();
        if text.len() <= self.text_cap {
            value.clone()
        } else {
            self.text(&text)
        }
    }
}

/// Most entries a MIME bundle's record keeps (real bundles have a handful).
pub const MAX_MIME_ENTRIES: usize = 256;
/// Longest MIME type kept as it is (RFC 6838 allows 127 bytes per part).
const MAX_MIME_NAME_BYTES: usize = 255;
/// The MIME types JupyterLab and the classic notebook render, in their order of
/// preference: these are what a user sees of a bundle.
const DISPLAYED_MIME_TYPES: &[&str] = &[
    "application/vnd.jupyter.widget-view+json",
    "application/javascript",
    "text/html",
    "text/markdown",
    "image/svg+xml",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/bmp",
    "application/pdf",
    "text/latex",
    "application/json",
    "text/plain",
];

/// Where a MIME type comes when a bundle is too large to keep whole: displayed types
/// first, then the other `vnd.` renderers' types, then the rest.
fn display_rank(mime: &str) -> usize {
    DISPLAYED_MIME_TYPES
        .iter()
        .position(|displayed| *displayed == mime)
        .unwrap_or(if mime.starts_with("application/vnd.") {
            DISPLAYED_MIME_TYPES.len()
        } else {
            DISPLAYED_MIME_TYPES.len() + 1
        })
}

/// A MIME type as a record's key: itself, or, when longer than any real one, its head
/// with its size and SHA-256.
fn kept_mime_name(mime: &str) -> String {
    if mime.len() <= MAX_MIME_NAME_BYTES {
        return mime.to_owned();
    }
    let head = &mime[..floor_boundary(mime, 64)];
    format!(
        "{head}… ({} bytes, sha256 {})",
        mime.len(),
        sha256_hex(mime.as_bytes())
    )
}

/// MIME types whose data Jupyter sends base64-encoded.
fn is_binary_mime(mime: &str) -> bool {
    let text_like = mime.starts_with("text/")
        || mime.ends_with("+json")
        || mime.ends_with("+xml")
        || mime == "application/json"
        || mime == "application/javascript";
    !text_like
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kept_shapes_are_the_schemas() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schema/audit-record.schema.json"))
                .expect("the schema is JSON");
        let keys = |value: Value| -> Vec<String> {
            value.as_object().expect("object").keys().cloned().collect()
        };
        let policy = SizePolicy {
            text_cap: 4,
            keep_binary: true,
        };
        let defs = &schema["$defs"];
        let binary = &defs["binary"]["oneOf"];
        for (written, declared) in [
            (policy.text("long enough"), &defs["truncated_text"]),
            (policy.buffer(b"x", true), &defs["buffer"]),
            (policy.binary("AAEC"), &binary[0]),
            (policy.binary("!!"), &binary[1]),
        ] {
            assert_eq!(keys(written), keys(declared["properties"].clone()));
        }
    }

    #[test]
    fn kept_shapes_read_back_as_written() {
        let policy = SizePolicy {
            text_cap: 10,
            keep_binary: true,
        };
        let cut = policy.text("0123456789abcdefghij");
        let Some(KeptText::Cut(read)) = KeptText::read(&cut) else {
            panic!("a cut text: {cut}");
        };
        assert_eq!(
            (read.size, &*read.head, &*read.tail),
            (20, "01234", "fghij")
        );
        assert_eq!(
            KeptText::read(&json!("short")),
            Some(KeptText::Whole("short".into()))
        );
        assert_eq!(
            KeptText::read(&json!({"truncated": false, "head": "x"})),
            None
        );
        assert_eq!(KeptText::read(&json!({"a": 1})), None);

        let bytes = KeptBytes {
            base64: Some("AAEC".into()),
            ..KeptBytes::of(b"\x00\x01\x02")
        };
        assert_eq!(
            bytes.clone().into_value(),
            to_json(&bytes),
            "base64 field name"
        );
        assert_eq!(
            KeptBytes::read(&policy.buffer(b"\x00\x01\x02", false)),
            Some(bytes)
        );
        let invalid = policy.binary("not base64 !!");
        assert!(InvalidBase64::read(&invalid).is_some());
    }

    #[test]
    fn short_text_is_kept_as_is() {
        let policy = SizePolicy {
            text_cap: 10,
            keep_binary: false,
        };
        assert_eq!(policy.text("hello"), json!("hello"));
    }

    #[test]
    fn long_text_keeps_head_tail_size_and_hash() {
        let policy = SizePolicy {
            text_cap: 10,
            keep_binary: false,
        };
        let text = "0123456789abcdefghij";
        let kept = policy.text(text);
        assert_eq!(kept["head"], "01234");
        assert_eq!(kept["tail"], "fghij");
        assert_eq!(kept["size"], 20);
        assert_eq!(kept["sha256"], sha256_hex(text.as_bytes()));
    }

    #[test]
    fn cuts_never_split_a_character() {
        let policy = SizePolicy {
            text_cap: 5,
            keep_binary: false,
        };
        let kept = policy.text("ééééééé");
        let head = kept["head"].as_str().expect("head");
        let tail = kept["tail"].as_str().expect("tail");
        assert!(head.len() <= 2 && tail.len() <= 3, "{head:?} {tail:?}");
    }

    #[test]
    fn images_are_hashed_and_text_kept() {
        let policy = SizePolicy::default();
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
        let (kept, _) = policy.mime_bundle(&json!({"image/png": png, "text/plain": "<Figure>"}));
        assert_eq!(kept["image/png"]["size"], 9);
        assert_eq!(kept["image/png"]["sha256"], sha256_hex(b"\x89PNG fake"));
        assert!(kept["image/png"].get("base64").is_none());
        assert_eq!(kept["text/plain"], "<Figure>");

        let keep_all = SizePolicy {
            keep_binary: true,
            ..SizePolicy::default()
        };
        assert_eq!(
            keep_all.mime_bundle(&json!({"image/png": png})).0["image/png"]["base64"],
            png
        );
    }

    #[test]
    fn json_mime_types_are_kept_as_json() {
        let policy = SizePolicy::default();
        let widget = json!({"model_id": "abc", "version_major": 2});
        let (kept, _) =
            policy.mime_bundle(&json!({"application/vnd.jupyter.widget-view+json": widget}));
        assert_eq!(kept["application/vnd.jupyter.widget-view+json"], widget);
    }

    #[test]
    fn invalid_base64_is_kept_as_text() {
        let kept = SizePolicy::default().binary("not base64 !!");
        assert_eq!(kept["invalid_base64"], "not base64 !!");
    }

    #[test]
    fn padding_cannot_push_the_displayed_entry_off_the_record() {
        let policy = SizePolicy::default();
        let mut bundle: serde_json::Map<String, Value> = (0..1000)
            .map(|index| (format!("text/x-pad{index}"), json!("a")))
            .collect();
        bundle.insert("text/plain".into(), json!("shown"));
        bundle.insert("x".repeat(10_000), json!("junk"));
        let (kept, omitted) = policy.mime_bundle(&Value::Object(bundle));
        assert_eq!(kept["text/plain"], "shown");
        assert_eq!(omitted, 1002 - MAX_MIME_ENTRIES);
        let kept = kept.as_object().expect("object");
        assert_eq!(kept.len(), MAX_MIME_ENTRIES);
        assert!(kept.keys().all(|mime| mime.len() < 400));
    }
}
