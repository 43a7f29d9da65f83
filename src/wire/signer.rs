//! HMAC signing and verification of the four signed parts of a message.

use bytes::Bytes;
use hmac::{Hmac, Mac};

use super::WireError;

/// The `signature_scheme` of a connection file (`hmac-<hash>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl SignatureScheme {
    /// Parses `hmac-sha256` and the other `hmac-<hash>` names Jupyter accepts.
    pub fn parse(name: &str) -> Result<Self, WireError> {
        match name {
            "hmac-md5" => Ok(Self::Md5),
            "hmac-sha1" => Ok(Self::Sha1),
            "hmac-sha224" => Ok(Self::Sha224),
            "hmac-sha256" | "" => Ok(Self::Sha256),
            "hmac-sha384" => Ok(Self::Sha384),
            "hmac-sha512" => Ok(Self::Sha512),
            other => Err(WireError::UnsupportedScheme(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "hmac-md5",
            Self::Sha1 => "hmac-sha1",
            Self::Sha224 => "hmac-sha224",
            Self::Sha256 => "hmac-sha256",
            Self::Sha384 => "hmac-sha384",
            Self::Sha512 => "hmac-sha512",
        }
    }
}

/// A keyed HMAC, ready to be cloned for each message (the key schedule is done once).
#[derive(Clone)]
enum KeyedMac {
    Md5(Hmac<md5::Md5>),
    Sha1(Hmac<sha1::Sha1>),
    Sha224(Hmac<sha2::Sha224>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

fn digest_of<M: Mac + Clone>(mac: &M, parts: [&[u8]; 4]) -> Vec<u8> {
    let mut mac = mac.clone();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn matches<M: Mac + Clone>(mac: &M, parts: [&[u8]; 4], expected: &[u8]) -> bool {
    let mut mac = mac.clone();
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

impl KeyedMac {
    fn new(key: &[u8], scheme: SignatureScheme) -> Self {
        // HMAC takes keys of any length, so new_from_slice cannot fail here.
        fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8]) -> M {
            <M as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
        }
        match scheme {
            SignatureScheme::Md5 => Self::Md5(keyed(key)),
            SignatureScheme::Sha1 => Self::Sha1(keyed(key)),
            SignatureScheme::Sha224 => Self::Sha224(keyed(key)),
            SignatureScheme::Sha256 => Self::Sha256(keyed(key)),
            SignatureScheme::Sha384 => Self::Sha384(keyed(key)),
            SignatureScheme::Sha512 => Self::Sha512(keyed(key)),
        }
    }

    fn digest(&self, parts: [&[u8]; 4]) -> Vec<u8> {
        match self {
            Self::Md5(mac) => digest_of(mac, parts),
            Self::Sha1(mac) => digest_of(mac, parts),
            Self::Sha224(mac) => digest_of(mac, parts),
            Self::Sha256(mac) => digest_of(mac, parts),
            Self::Sha384(mac) => digest_of(mac, parts),
            Self::Sha512(mac) => digest_of(mac, parts),
        }
    }

    fn matches(&self, parts: [&[u8]; 4], expected: &[u8]) -> bool {
        match self {
            Self::Md5(mac) => matches(mac, parts, expected),
            Self::Sha1(mac) => matches(mac, parts, expected),
            Self::Sha224(mac) => matches(mac, parts, expected),
            Self::Sha256(mac) => matches(mac, parts, expected),
            Self::Sha384(mac) => matches(mac, parts, expected),
            Self::Sha512(mac) => matches(mac, parts, expected),
        }
    }
}

/// Signs and verifies messages for one side of the proxy. An empty key means the
/// session is unsigned: signatures are empty and not checked.
#[derive(Clone)]
pub struct Signer {
    mac: Option<KeyedMac>,
    scheme: SignatureScheme,
}

impl std::fmt::Debug for Signer {
    // Never print the key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Signer")
            .field("scheme", &self.scheme.name())
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl Signer {
    pub fn new(key: &[u8], scheme: SignatureScheme) -> Self {
        let mac = (!key.is_empty()).then(|| KeyedMac::new(key, scheme));
        Self { mac, scheme }
    }

    /// Whether messages carry signatures (a non-empty key).
    pub fn is_signing(&self) -> bool {
        self.mac.is_some()
    }

    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// The lowercase hex signature of the four parts (empty when unsigned).
    pub fn sign(&self, parts: [&[u8]; 4]) -> Bytes {
        match &self.mac {
            Some(mac) => Bytes::from(hex::encode(mac.digest(parts))),
            None => Bytes::new(),
        }
    }

    /// Checks a hex signature in constant time.
    pub fn verify(&self, parts: [&[u8]; 4], signature: &[u8]) -> Result<(), WireError> {
        let Some(mac) = &self.mac else {
            return Ok(());
        };
        if signature.is_empty() {
            return Err(WireError::MissingSignature);
        }
        let expected = hex::decode(signature).map_err(|_| WireError::BadSignature)?;
        if mac.matches(parts, &expected) {
            Ok(())
        } else {
            Err(WireError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTS: [&[u8]; 4] = [
        b"{\"msg_id\":\"1\"}",
        b"{}",
        b"{}",
        b"{\"code\":\"print(1)\"}",
    ];

    /// Reference digests computed with Python's `hmac` module over PARTS, key b"secret".
    #[test]
    fn known_answers_match_python_hmac() {
        let cases = [
            ("hmac-md5", "f011e4ba7632fd679f58efce9cf401a0"),
            ("hmac-sha1", "53390d2ed6ae8ff09dfa44e472c74ad698cb8c5b"),
            (
                "hmac-sha256",
                "33f23ac189cf5ccc41dfd2a86cd68133bdf204e8d03a44e53ce2dfaa6f085746",
            ),
            (
                "hmac-sha512",
                "4fe7731291f33906ac4f39875ec12b7d17cd48908546df06d60c71e288b5a30043cb788ff6c81e65bed1be9dc76e37b51237877dba9b13c8234d242461435577",
            ),
        ];
        for (name, expected) in cases {
            let signer = Signer::new(
                b"secret",
                SignatureScheme::parse(name).expect("known scheme"),
            );
            assert_eq!(signer.sign(PARTS).as_ref(), expected.as_bytes(), "{name}");
            signer
                .verify(PARTS, expected.to_uppercase().as_bytes())
                .expect("hex case does not matter");
        }
    }

    #[test]
    fn every_scheme_signs_and_verifies_with_the_right_length() {
        for (name, hex_len) in [
            ("hmac-md5", 32),
            ("hmac-sha1", 40),
            ("hmac-sha224", 56),
            ("hmac-sha256", 64),
            ("hmac-sha384", 96),
            ("hmac-sha512", 128),
        ] {
            let signer = Signer::new(b"secret", SignatureScheme::parse(name).expect("known"));
            let signature = signer.sign(PARTS);
            assert_eq!(signature.len(), hex_len, "{name}");
            signer
                .verify(PARTS, &signature)
                .expect("own signature verifies");
            let other = Signer::new(b"other", signer.scheme());
            assert_eq!(
                other.verify(PARTS, &signature),
                Err(WireError::BadSignature),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_scheme_is_refused() {
        assert_eq!(
            SignatureScheme::parse("hmac-whirlpool"),
            Err(WireError::UnsupportedScheme("hmac-whirlpool".into()))
        );
    }

    #[test]
    fn empty_key_means_unsigned() {
        let signer = Signer::new(b"", SignatureScheme::Sha256);
        assert!(!signer.is_signing());
        assert!(signer.sign(PARTS).is_empty());
        signer.verify(PARTS, b"").expect("no check");
        signer.verify(PARTS, b"anything").expect("no check");
    }

    #[test]
    fn missing_malformed_and_tampered_signatures_are_rejected() {
        let signer = Signer::new(b"secret", SignatureScheme::Sha256);
        let good = signer.sign(PARTS);
        assert_eq!(signer.verify(PARTS, b""), Err(WireError::MissingSignature));
        assert_eq!(
            signer.verify(PARTS, b"zz-not-hex"),
            Err(WireError::BadSignature)
        );
        assert_eq!(
            signer.verify(PARTS, &good[..10]),
            Err(WireError::BadSignature)
        );
        let tampered = [PARTS[0], PARTS[1], PARTS[2], b"{\"code\":\"print(2)\"}"];
        assert_eq!(signer.verify(tampered, &good), Err(WireError::BadSignature));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let printed = format!(
            "{:?}",
            Signer::new(b"super-secret-key", SignatureScheme::Sha256)
        );
        assert!(!printed.contains("super-secret-key"));
    }
}
