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

/// An audit entry's id, for an entry made at `at`: its first 4 characters
/// are the time in milliseconds modulo 2^20 (about 17 minutes), the other 8
/// random (40 bits). Entries made one after another then sit side by side in
/// the audit table's key index, so a group commit's entries dirty one or two
/// of its pages instead of one page each (with wholly random ids, 8–11
/// scattered index pages of the ~60 a batch of creates writes). Audit
/// entries are not records: nothing looks them up by id, which stays unique
/// per workspace as before (entries of different milliseconds never share
/// one).
pub fn new_audit_id(at: crate::db::Ts) -> String {
    let mut r = [0u8; 12];
    rand::fill(&mut r);
    audit_id(at.micros().div_euclid(1000), r)
}

fn audit_id(ms: i64, mut random: [u8; 12]) -> String {
    let t = ms.rem_euclid(1 << 20);
    for (i, b) in random.iter_mut().take(4).enumerate() {
        *b = ((t >> (15 - 5 * i)) & 31) as u8;
    }
    id_from_random(Kind::Audit, random)
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

    /// Audit ids sort in the order they were made (within the ~17 minutes
    /// before the time part wraps), keep 8 random characters, and are
    /// well-formed audit ids.
    #[test]
    fn audit_ids_sort_by_time_and_stay_random() {
        // Milliseconds, at the start of a wrap of the time part.
        let base = 1_712i64 << 20;
        let mut ids = Vec::new();
        for step in [0, 1, 2, 31, 32, 1000, 60_000, 1_000_000] {
            let mut r = [0u8; 12];
            rand::fill(&mut r);
            ids.push(audit_id(base + step, r));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let a = audit_id(base, [7; 12]);
        let b = audit_id(base, [9; 12]);
        assert_eq!(a[..6], b[..6], "the same millisecond, the same time part");
        assert_eq!(&a[6..], "77777777");
        assert_eq!(&b[6..], "99999999");
        assert_eq!(
            crate::wire::handle::parse_ref(Kind::Audit, &a),
            Ok(a.clone())
        );
        // The time part wraps after 2^20 ms.
        assert_eq!(audit_id(base + (1 << 20), [7; 12]), a);
        let now = crate::db::Ts::now();
        let id = new_audit_id(now);
        assert_eq!(id[..6], audit_id(now.micros() / 1000, [0; 12])[..6]);
        assert_ne!(new_audit_id(now), id);
    }

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
