//! Jupyter wire parsing and signature checking, as the proxy does for every frontend
//! message: split the frames, read the header, verify the HMAC, catch replays, re-sign.
//!
//! Input: `[scheme byte][key length byte][key][frame]0xff[frame]0xff…`. 0xff never
//! occurs in UTF-8, hex or JSON, so real messages split cleanly (see `seeds/`).
#![no_main]

use bytes::Bytes;
use jupyter_audit::wire::{ReplayGuard, SignatureScheme, Signer, WireError, WireMessage};
use libfuzzer_sys::fuzz_target;

const SCHEMES: [&str; 7] = [
    "hmac-md5",
    "hmac-sha1",
    "hmac-sha224",
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
    "",
];

fuzz_target!(|data: &[u8]| {
    let [selector, key_len, rest @ ..] = data else {
        return;
    };
    let key_len = usize::from(*key_len).min(rest.len());
    let (key, body) = rest.split_at(key_len);
    let scheme = SignatureScheme::parse(SCHEMES[usize::from(*selector) % SCHEMES.len()])
        .expect("every listed scheme parses");
    assert_eq!(SignatureScheme::parse(scheme.name()), Ok(scheme));
    let signer = Signer::new(key, scheme);

    let frames: Vec<Bytes> = body
        .split(|&b| b == 0xff)
        .map(Bytes::copy_from_slice)
        .collect();
    let total: usize = frames.iter().map(Bytes::len).sum();
    // A limit somewhere around the message's size exercises the size check both ways.
    let limit = total.saturating_sub(usize::from(*selector >> 4));
    let message = match WireMessage::from_frames(frames.clone(), limit) {
        Ok(message) => message,
        Err(WireError::Oversized { size, limit: cap }) => {
            // The refusal names the message's size and the limit it broke.
            assert_eq!((size, cap), (total, limit));
            assert!(size > cap);
            return;
        }
        Err(_) => return,
    };
    assert_eq!(message.size(), total);
    // Whatever the header frame holds, reading it must not panic.
    let _ = message.header();

    let verified = message.verify(&signer);
    if !signer.is_signing() {
        assert_eq!(verified, Ok(()), "an empty key checks nothing");
    }

    let mut guard = ReplayGuard::new(4);
    let first = guard.check(&message.signature);
    let second = guard.check(&message.signature);
    if message.signature.is_empty() {
        assert!(first.is_ok() && second.is_ok(), "unsigned messages are never replays");
    } else if first.is_ok() {
        assert_eq!(second, Err(WireError::Replayed), "a second use is a replay");
        let recased = Bytes::from(message.signature.to_ascii_uppercase());
        if recased != message.signature {
            assert_eq!(
                guard.check(&recased),
                Err(WireError::Replayed),
                "a re-cased copy is a replay"
            );
        }
    } else {
        assert_eq!(first, Err(WireError::NonCanonicalSignature), "{first:?}");
        assert_eq!(second, first, "a refused signature is not remembered");
    }

    // What the proxy does next: re-sign for the other side, whose check must pass,
    // and forward the frames with only the signature changed.
    let other = Signer::new(b"the kernel side's key", scheme);
    let mut forwarded = message.clone();
    forwarded.resign(&other);
    assert_eq!(forwarded.verify(&other), Ok(()));
    if verified.is_ok() && signer.is_signing() {
        let mut again = message.clone();
        again.resign(&signer);
        assert!(again.signature.eq_ignore_ascii_case(&message.signature));
    }
    let mut expected = frames;
    let delimiter = message.routing.len();
    expected[delimiter + 1] = forwarded.signature.clone();
    assert_eq!(forwarded.into_frames(), expected);
    assert_eq!(message.into_frames().len(), expected.len());
});
