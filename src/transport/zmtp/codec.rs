//! ZMTP 3.0 bytes: the greeting, frames, and the commands the frontend side needs.
//!
//! Sizes are checked from the frame header, before any allocation, so a peer that
//! announces a huge frame costs nothing: the frame is skipped as it streams in.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The greeting the proxy sends: ZMTP 3.0, NULL mechanism, not as-server.
/// Announcing 3.0 makes libzmq peers send subscriptions as `\x01topic` messages.
pub(super) fn greeting() -> [u8; 64] {
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[11] = 0;
    greeting[12..16].copy_from_slice(b"NULL");
    greeting
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZmtpError {
    #[error("not a ZMTP peer (bad greeting signature)")]
    BadSignature,
    #[error("ZMTP version {0}.{1} is too old (3.0 or later needed)")]
    OldVersion(u8, u8),
    #[error("security mechanism {0:?} is not supported (only NULL)")]
    Mechanism(String),
    #[error("malformed command")]
    BadCommand,
    #[error("expected READY, got {0:?}")]
    NotReady(String),
    #[error("peer socket type {0:?} cannot talk to this socket")]
    IncompatibleSocket(String),
}

/// Checks a peer's 64-byte greeting.
pub(super) fn check_greeting(greeting: &[u8; 64]) -> Result<(), ZmtpError> {
    if greeting[0] != 0xff || greeting[9] != 0x7f {
        return Err(ZmtpError::BadSignature);
    }
    if greeting[10] < 3 {
        return Err(ZmtpError::OldVersion(greeting[10], greeting[11]));
    }
    let mechanism = &greeting[12..32];
    let end = mechanism
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(mechanism.len());
    if &mechanism[..end] != b"NULL" {
        return Err(ZmtpError::Mechanism(
            String::from_utf8_lossy(&mechanism[..end]).into_owned(),
        ));
    }
    Ok(())
}

const FLAG_MORE: u8 = 0b001;
const FLAG_LONG: u8 = 0b010;
const FLAG_COMMAND: u8 = 0b100;

/// Encodes a READY command with the given properties.
pub(super) fn ready_command(properties: &[(&str, &[u8])]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u8(5);
    body.put_slice(b"READY");
    for (name, value) in properties {
        body.put_u8(name.len() as u8);
        body.put_slice(name.as_bytes());
        body.put_u32(value.len() as u32);
        body.put_slice(value);
    }
    let mut out = BytesMut::new();
    put_frame_header(&mut out, FLAG_COMMAND, body.len());
    out.put(body);
    out
}

/// A parsed command: its name and body after the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Command {
    pub name: String,
    pub body: Bytes,
}

impl Command {
    fn parse(mut frame: Bytes) -> Result<Self, ZmtpError> {
        if frame.is_empty() {
            return Err(ZmtpError::BadCommand);
        }
        let length = usize::from(frame.get_u8());
        if frame.len() < length {
            return Err(ZmtpError::BadCommand);
        }
        let name = String::from_utf8_lossy(&frame.split_to(length)).into_owned();
        Ok(Self { name, body: frame })
    }

    /// The properties of a READY command (name, value).
    pub fn properties(&self) -> Result<Vec<(String, Bytes)>, ZmtpError> {
        let mut body = self.body.clone();
        let mut properties = Vec::new();
        while body.has_remaining() {
            let name_length = usize::from(body.get_u8());
            if body.remaining() < name_length + 4 {
                return Err(ZmtpError::BadCommand);
            }
            let name = String::from_utf8_lossy(&body.split_to(name_length)).into_owned();
            let value_length = body.get_u32() as usize;
            if body.remaining() < value_length {
                return Err(ZmtpError::BadCommand);
            }
            properties.push((name, body.split_to(value_length)));
        }
        Ok(properties)
    }
}

fn put_frame_header(out: &mut BytesMut, flags: u8, length: usize) {
    if length > 255 {
        out.put_u8(flags | FLAG_LONG);
        out.put_u64(length as u64);
    } else {
        out.put_u8(flags);
        out.put_u8(length as u8);
    }
}

/// Frames up to this size are copied next to their header; larger ones are written
/// from their own buffer, without a copy.
const INLINE_FRAME: usize = 8 * 1024;

/// Encodes a multipart message as write chunks (headers, small frames inline).
pub(super) fn encode_message(frames: &[Bytes], chunks: &mut Vec<Bytes>) {
    let mut pending = BytesMut::new();
    let last = frames.len().saturating_sub(1);
    for (index, frame) in frames.iter().enumerate() {
        let flags = if index < last { FLAG_MORE } else { 0 };
        put_frame_header(&mut pending, flags, frame.len());
        if frame.len() <= INLINE_FRAME {
            pending.put_slice(frame);
        } else {
            chunks.push(pending.split().freeze());
            chunks.push(frame.clone());
        }
    }
    if !pending.is_empty() {
        chunks.push(pending.freeze());
    }
}

/// What the decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    Message(Vec<Bytes>),
    Command(Command),
    /// A message that went over the size limit and was skipped. `head` holds the
    /// frames that arrived before the limit was crossed (for the diagnostic).
    Oversized {
        size: u64,
        head: Vec<Bytes>,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Flags,
    Length { flags: u8 },
    Body { flags: u8, length: usize },
    Skip { flags: u8, remaining: u64 },
}

/// Turns a byte stream (after the greeting) into messages and commands.
#[derive(Debug)]
pub(super) struct Decoder {
    state: State,
    limit: usize,
    frames: Vec<Bytes>,
    size: u64,
    skipping: bool,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Self {
            state: State::Flags,
            limit,
            frames: Vec::new(),
            size: 0,
            skipping: false,
        }
    }

    /// How many more bytes the current step needs (a hint for buffer growth).
    pub fn wanted(&self) -> usize {
        match self.state {
            State::Flags => 1,
            State::Length { flags } => {
                if flags & FLAG_LONG != 0 {
                    8
                } else {
                    1
                }
            }
            State::Body { length, .. } => length,
            State::Skip { remaining, .. } => usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(64 * 1024),
        }
    }

    /// Decodes the next item from `buffer`, or None when more bytes are needed.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Incoming>, ZmtpError> {
        loop {
            match self.state {
                State::Flags => {
                    if buffer.is_empty() {
                        return Ok(None);
                    }
                    let flags = buffer.get_u8();
                    self.state = State::Length { flags };
                }
                State::Length { flags } => {
                    let long = flags & FLAG_LONG != 0;
                    let needed = if long { 8 } else { 1 };
                    if buffer.len() < needed {
                        return Ok(None);
                    }
                    let length = if long {
                        buffer.get_u64()
                    } else {
                        u64::from(buffer.get_u8())
                    };
                    let command = flags & FLAG_COMMAND != 0;
                    let total = self.size.saturating_add(length);
                    if command && length > 64 * 1024 {
                        return Err(ZmtpError::BadCommand);
                    }
                    if !command && (self.skipping || total > self.limit as u64) {
                        self.skipping = true;
                        self.size = total;
                        self.state = State::Skip {
                            flags,
                            remaining: length,
                        };
                    } else {
                        if !command {
                            self.size = total;
                        }
                        // Within the limit, so it fits in usize.
                        let length = usize::try_from(length).unwrap_or(usize::MAX);
                        self.state = State::Body { flags, length };
                    }
                }
                State::Body { flags, length } => {
                    if buffer.len() < length {
                        buffer.reserve(length - buffer.len());
                        return Ok(None);
                    }
                    let frame = buffer.split_to(length).freeze();
                    self.state = State::Flags;
                    if flags & FLAG_COMMAND != 0 {
                        return Command::parse(frame)
                            .map(|command| Some(Incoming::Command(command)));
                    }
                    self.frames.push(frame);
                    if flags & FLAG_MORE == 0 {
                        self.size = 0;
                        return Ok(Some(Incoming::Message(std::mem::take(&mut self.frames))));
                    }
                }
                State::Skip { flags, remaining } => {
                    let available = buffer.len() as u64;
                    if available < remaining {
                        buffer.advance(buffer.len());
                        self.state = State::Skip {
                            flags,
                            remaining: remaining - available,
                        };
                        return Ok(None);
                    }
                    buffer.advance(remaining as usize);
                    self.state = State::Flags;
                    if flags & FLAG_MORE == 0 {
                        let size = std::mem::take(&mut self.size);
                        self.skipping = false;
                        let head = std::mem::take(&mut self.frames);
                        return Ok(Some(Incoming::Oversized { size, head }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> BytesMut {
        let frames: Vec<Bytes> = frames
            .iter()
            .map(|frame| Bytes::copy_from_slice(frame))
            .collect();
        let mut chunks = Vec::new();
        encode_message(&frames, &mut chunks);
        let mut out = BytesMut::new();
        for chunk in chunks {
            out.put(chunk);
        }
        out
    }

    fn decode_all(decoder: &mut Decoder, mut bytes: BytesMut) -> Vec<Incoming> {
        let mut out = Vec::new();
        while let Some(item) = decoder.decode(&mut bytes).expect("valid stream") {
            out.push(item);
        }
        out
    }

    #[test]
    fn greeting_is_zmtp_3_null() {
        let greeting = greeting();
        check_greeting(&greeting).expect("own greeting is valid");
        let mut curve = greeting;
        curve[12..17].copy_from_slice(b"CURVE");
        assert_eq!(
            check_greeting(&curve),
            Err(ZmtpError::Mechanism("CURVE".into()))
        );
        let mut old = greeting;
        old[10] = 2;
        assert_eq!(check_greeting(&old), Err(ZmtpError::OldVersion(2, 0)));
        assert_eq!(check_greeting(&[0u8; 64]), Err(ZmtpError::BadSignature));
    }

    #[test]
    fn messages_round_trip_short_and_long_frames() {
        let big = vec![7u8; 100_000];
        let bytes = encode(&[b"id", b"", &big, b"last"]);
        let mut decoder = Decoder::new(usize::MAX);
        let items = decode_all(&mut decoder, bytes);
        assert_eq!(
            items,
            vec![Incoming::Message(vec![
                Bytes::from_static(b"id"),
                Bytes::new(),
                Bytes::from(big),
                Bytes::from_static(b"last"),
            ])]
        );
    }

    #[test]
    fn byte_by_byte_input_decodes_the_same() {
        let bytes = encode(&[b"a", &[1u8; 300], b"c"]);
        let mut decoder = Decoder::new(usize::MAX);
        let mut buffer = BytesMut::new();
        let mut items = Vec::new();
        for byte in bytes {
            buffer.put_u8(byte);
            if let Some(item) = decoder.decode(&mut buffer).expect("valid") {
                items.push(item);
            }
        }
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn ready_command_properties_parse() {
        let bytes = ready_command(&[("Socket-Type", b"DEALER"), ("Identity", b"abc")]);
        let mut decoder = Decoder::new(usize::MAX);
        let items = decode_all(&mut decoder, bytes);
        let [Incoming::Command(command)] = items.as_slice() else {
            panic!("one command expected: {items:?}");
        };
        assert_eq!(command.name, "READY");
        let properties = command.properties().expect("valid properties");
        assert_eq!(
            properties[0],
            ("Socket-Type".into(), Bytes::from_static(b"DEALER"))
        );
        assert_eq!(
            properties[1],
            ("Identity".into(), Bytes::from_static(b"abc"))
        );
    }

    #[test]
    fn oversized_message_is_skipped_without_allocating_and_the_next_one_decodes() {
        let mut bytes = encode(&[b"<IDS|MSG>", &[0u8; 5000]]);
        bytes.put(encode(&[b"small"]));
        let mut decoder = Decoder::new(1000);
        let items = decode_all(&mut decoder, bytes);
        assert_eq!(
            items,
            vec![
                Incoming::Oversized {
                    size: 5009,
                    head: vec![Bytes::from_static(b"<IDS|MSG>")]
                },
                Incoming::Message(vec![Bytes::from_static(b"small")]),
            ]
        );
    }

    #[test]
    fn an_absurd_announced_length_is_skipped_not_reserved() {
        // A long frame announcing 2^62 bytes, then nothing: the decoder must not try
        // to allocate it.
        let mut bytes = BytesMut::new();
        bytes.put_u8(FLAG_LONG);
        bytes.put_u64(1 << 62);
        bytes.put_slice(&[0u8; 100]);
        let mut decoder = Decoder::new(1 << 20);
        assert_eq!(decoder.decode(&mut bytes), Ok(None));
        assert!(bytes.capacity() < 1 << 20);
    }

    #[test]
    fn malformed_commands_are_errors() {
        let mut bytes = BytesMut::new();
        put_frame_header(&mut bytes, FLAG_COMMAND, 3);
        bytes.put_slice(&[10, b'R', b'E']);
        let mut decoder = Decoder::new(usize::MAX);
        assert_eq!(decoder.decode(&mut bytes), Err(ZmtpError::BadCommand));

        let command = Command {
            name: "READY".into(),
            body: Bytes::from_static(&[11, b'S']),
        };
        assert_eq!(command.properties(), Err(ZmtpError::BadCommand));
    }
}
