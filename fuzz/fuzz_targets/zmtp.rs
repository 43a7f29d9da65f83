//! The frontend side's ZMTP decoder: the first parser that a frontend's bytes meet,
//! before any signature is checked.
//! Input: one byte that sets where the stream is cut into pieces, then the bytes a
//! frontend sends: its 64-byte greeting and what follows (inputs shorter than a
//! greeting are decoded as frames).
#![no_main]

use jupyter_audit::transport::{DecodedItem, decode_frontend_bytes};
use libfuzzer_sys::fuzz_target;

/// A small limit, so that oversized messages and skipping are reached often.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (greeting, body) = match stream.split_first_chunk::<64>() {
        Some((greeting, body)) => (Some(greeting), body),
        None => (None, stream),
    };
    let (whole, whole_error) = decode_frontend_bytes(greeting, &[body], LIMIT);
    // However the network cuts the stream, the decoder sees the same messages.
    let size = usize::from(cut).max(1);
    let pieces: Vec<&[u8]> = body.chunks(size).collect();
    let (cut_up, cut_up_error) = decode_frontend_bytes(greeting, &pieces, LIMIT);
    assert_eq!(whole, cut_up, "pieces of {size} bytes decode differently");
    assert_eq!(whole_error, cut_up_error);

    for item in &whole {
        match item {
            DecodedItem::Message(frames) => {
                let total: usize = frames.iter().map(|frame| frame.len()).sum();
                assert!(
                    total <= LIMIT,
                    "a message of {total} bytes passed the limit"
                );
            }
            DecodedItem::Oversized { size } => assert!(*size > LIMIT as u64),
            DecodedItem::Command { .. } => {}
        }
    }
});
