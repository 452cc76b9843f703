//! Stable event ids. An event sent twice (an Alertmanager HA pair, a retried
//! webhook, a redelivered message) must get the same id, so ids are derived from
//! content unless the sender gives its own idempotency key.

use sha2::{Digest, Sha256};

/// Longest sender-supplied id we accept; longer ones are a client bug, not a key.
pub const MAX_ID_LEN: usize = 200;

/// Hashes `parts` (separated so that `("ab","c")` and `("a","bc")` differ) into a
/// short hex id with a kind prefix, e.g. `al-3f2a…`.
pub fn content_id(prefix: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(prefix.len() + 1 + 32);
    out.push_str(prefix);
    out.push('-');
    for byte in &digest[..16] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// A 64-bit key for a string, used for PostgreSQL advisory locks on group keys.
pub fn lock_key(s: &str) -> i64 {
    let digest = Sha256::digest(s.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(bytes)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_id_is_stable_and_separates_parts() {
        assert_eq!(
            content_id("al", &["a", "bc"]),
            content_id("al", &["a", "bc"])
        );
        assert_ne!(
            content_id("al", &["ab", "c"]),
            content_id("al", &["a", "bc"])
        );
        let id = content_id("dp", &["x"]);
        assert!(id.starts_with("dp-"));
        assert_eq!(id.len(), 3 + 32);
    }
}
