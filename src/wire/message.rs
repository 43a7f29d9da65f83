//! Splitting frames into a [`WireMessage`] and joining them back.

use bytes::Bytes;
use serde::Deserialize;

use super::WireError;
use super::signer::Signer;

/// The frame that separates routing identities from the message proper.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// One Jupyter message, with its signed parts kept as the bytes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// Frames before the delimiter: ROUTER identities or an iopub topic.
    pub routing: Vec<Bytes>,
    /// The hex HMAC as received (empty when the session is unsigned).
    pub signature: Bytes,
    pub header: Bytes,
    pub parent_header: Bytes,
    pub metadata: Bytes,
    pub content: Bytes,
    pub buffers: Vec<Bytes>,
}

/// The header fields the proxy reads; everything else is forwarded untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub msg_id: String,
    #[serde(default)]
    pub msg_type: String,
}

impl WireMessage {
    /// Splits a multipart message. `limit` caps the total size of all frames.
    pub fn from_frames(frames: Vec<Bytes>, limit: usize) -> Result<Self, WireError> {
        if frames.is_empty() {
            return Err(WireError::Empty);
        }
        let size: usize = frames.iter().map(Bytes::len).sum();
        if size > limit {
            return Err(WireError::Oversized { size, limit });
        }
        let delimiter = frames
            .iter()
            .position(|frame| frame.as_ref() == DELIMITER)
            .ok_or(WireError::MissingDelimiter)?;
        let after = frames.len() - delimiter - 1;
        if after < 5 {
            return Err(WireError::TooFewFrames(after));
        }
        let mut frames = frames.into_iter();
        let routing: Vec<Bytes> = frames.by_ref().take(delimiter).collect();
        frames.next(); // the delimiter itself
        let mut next = || frames.next().unwrap_or_default();
        let signature = next();
        let header = next();
        let parent_header = next();
        let metadata = next();
        let content = next();
        Ok(Self {
            routing,
            signature,
            header,
            parent_header,
            metadata,
            content,
            buffers: frames.collect(),
        })
    }

    /// Builds a message from its JSON parts (used for messages the proxy originates).
    pub fn new(
        routing: Vec<Bytes>,
        header: Bytes,
        parent_header: Bytes,
        metadata: Bytes,
        content: Bytes,
    ) -> Self {
        Self {
            routing,
            signature: Bytes::new(),
            header,
            parent_header,
            metadata,
            content,
            buffers: Vec::new(),
        }
    }

    /// The four signed parts, in signing order.
    pub fn signed_parts(&self) -> [&[u8]; 4] {
        [
            &self.header,
            &self.parent_header,
            &self.metadata,
            &self.content,
        ]
    }

    /// Parses the header fields the proxy needs.
    pub fn header(&self) -> Result<Header, WireError> {
        serde_json::from_slice(&self.header)
            .map_err(|error| WireError::BadHeader(error.to_string()))
    }

    /// Checks the signature against `signer`'s key.
    pub fn verify(&self, signer: &Signer) -> Result<(), WireError> {
        signer.verify(self.signed_parts(), &self.signature)
    }

    /// Replaces the signature with one made by `signer` (for the other side's key).
    pub fn resign(&mut self, signer: &Signer) {
        self.signature = signer.sign(self.signed_parts());
    }

    /// Total size of all frames, in bytes.
    pub fn size(&self) -> usize {
        self.routing.iter().map(Bytes::len).sum::<usize>()
            + DELIMITER.len()
            + self.signature.len()
            + self
                .signed_parts()
                .iter()
                .map(|part| part.len())
                .sum::<usize>()
            + self.buffers.iter().map(Bytes::len).sum::<usize>()
    }

    /// Joins the message back into frames.
    pub fn into_frames(self) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(self.routing.len() + 6 + self.buffers.len());
        frames.extend(self.routing);
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(self.signature);
        frames.push(self.header);
        frames.push(self.parent_header);
        frames.push(self.metadata);
        frames.push(self.content);
        frames.extend(self.buffers);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::SignatureScheme;

    fn frames(parts: &[&[u8]]) -> Vec<Bytes> {
        parts
            .iter()
            .map(|part| Bytes::copy_from_slice(part))
            .collect()
    }

    const HEADER: &[u8] = br#"{"msg_id":"m1","msg_type":"execute_request","session":"s","username":"u","date":"2026-01-01T00:00:00Z","version":"5.4"}"#;

    #[test]
    fn splits_routing_signed_parts_and_buffers() {
        let message = WireMessage::from_frames(
            frames(&[
                b"id1",
                b"id2",
                DELIMITER,
                b"sig",
                HEADER,
                b"{}",
                b"{}",
                b"{\"code\":\"1\"}",
                b"buf1",
                b"buf2",
            ]),
            usize::MAX,
        )
        .expect("valid message");
        assert_eq!(message.routing, frames(&[b"id1", b"id2"]));
        assert_eq!(message.signature.as_ref(), b"sig");
        assert_eq!(message.content.as_ref(), b"{\"code\":\"1\"}");
        assert_eq!(message.buffers, frames(&[b"buf1", b"buf2"]));
        let header = message.header().expect("header parses");
        assert_eq!(header.msg_id, "m1");
        assert_eq!(header.msg_type, "execute_request");
    }

    #[test]
    fn round_trips_frames_unchanged() {
        let original = frames(&[
            b"id",
            DELIMITER,
            b"sig",
            HEADER,
            b"{}",
            b"{}",
            b"{}",
            b"\x00\xff",
        ]);
        let message = WireMessage::from_frames(original.clone(), usize::MAX).expect("valid");
        assert_eq!(
            message.size(),
            original.iter().map(Bytes::len).sum::<usize>()
        );
        assert_eq!(message.into_frames(), original);
    }

    #[test]
    fn message_without_routing_is_accepted() {
        let message = WireMessage::from_frames(
            frames(&[DELIMITER, b"", HEADER, b"{}", b"{}", b"{}"]),
            usize::MAX,
        )
        .expect("valid");
        assert!(message.routing.is_empty());
        assert!(message.buffers.is_empty());
    }

    #[test]
    fn rejects_malformed_multiparts() {
        assert_eq!(WireMessage::from_frames(vec![], 100), Err(WireError::Empty));
        assert_eq!(
            WireMessage::from_frames(
                frames(&[b"id", b"sig", HEADER, b"{}", b"{}", b"{}"]),
                usize::MAX
            ),
            Err(WireError::MissingDelimiter)
        );
        assert_eq!(
            WireMessage::from_frames(frames(&[b"id", DELIMITER, b"sig", HEADER]), usize::MAX),
            Err(WireError::TooFewFrames(2))
        );
        assert_eq!(
            WireMessage::from_frames(frames(&[b"garbage"]), usize::MAX),
            Err(WireError::MissingDelimiter)
        );
    }

    #[test]
    fn rejects_oversized_messages_before_parsing() {
        let big = vec![0u8; 1000];
        let error =
            WireMessage::from_frames(frames(&[DELIMITER, b"", HEADER, b"{}", b"{}", &big]), 500)
                .expect_err("over the cap");
        assert!(matches!(error, WireError::Oversized { limit: 500, .. }));
    }

    #[test]
    fn bad_header_json_is_an_error_not_a_panic() {
        for header in [
            &b"{not json"[..],
            b"",
            b"[1,2]",
            b"\xff\xfe",
            b"{\"msg_type\": 5}",
        ] {
            let message = WireMessage::from_frames(
                frames(&[DELIMITER, b"", header, b"{}", b"{}", b"{}"]),
                usize::MAX,
            )
            .expect("framing is fine");
            assert!(
                matches!(message.header(), Err(WireError::BadHeader(_))),
                "{header:?}"
            );
        }
    }

    #[test]
    fn resign_then_verify_with_the_other_key() {
        let frontend = Signer::new(b"frontend-key", SignatureScheme::Sha256);
        let kernel = Signer::new(b"kernel-key", SignatureScheme::Sha256);
        let mut message = WireMessage::new(
            vec![],
            Bytes::from_static(HEADER),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
        );
        message.resign(&frontend);
        message.verify(&frontend).expect("signed with frontend key");
        assert_eq!(message.verify(&kernel), Err(WireError::BadSignature));
        message.resign(&kernel);
        message.verify(&kernel).expect("re-signed with kernel key");
        assert_eq!(message.header.as_ref(), HEADER, "header bytes untouched");
    }
}
