//! Everything random or hashed: record ids, bearer tokens, one-time codes,
//! confirmation tokens. All randomness comes from rand's thread RNG, a CSPRNG
//! seeded from the OS.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::wire::handle::{Kind, id_from_random};

pub fn new_id(kind: Kind) -> String {
    let mut r = [0u8; 12];
    rand::fill(&mut r);
    id_from_random(kind, r)
}

/// `ck_` + 256 random bits, base64url (43 characters).
pub fn new_token() -> String {
    let mut r = [0u8; 32];
    rand::fill(&mut r);
    format!("ck_{}", URL_SAFE_NO_PAD.encode(r))
}

/// True when `s` has the shape of a token this server mints.
pub fn looks_like_token(s: &str) -> bool {
    s.strip_prefix("ck_").is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    })
}

/// A random URL-safe secret with a prefix, for delete confirmations.
pub fn new_secret(prefix: &str) -> String {
    let mut r = [0u8; 18];
    rand::fill(&mut r);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(r))
}

/// Six decimal digits, uniform.
pub fn new_code() -> String {
    format!("{:06}", rand::random_range(0..1_000_000u32))
}

pub fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// A one-time code's hash, salted with what it is bound to (an address, or a
/// user + action + target), so equal codes never hash alike.
pub fn code_hash(binding: &str, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(binding.as_bytes());
    h.update([0u8]);
    h.update(code.as_bytes());
    hex(&h.finalize())
}

pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_distinct_and_recognised() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(looks_like_token(&a), "{a}");
        assert!(!looks_like_token(&a[..a.len() - 1]));
        assert!(!looks_like_token(&format!("{a}x")));
    }

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
