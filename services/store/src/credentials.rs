//! Credentials, made and checked where both the HTTP layer and the command
//! line reach them: machine tokens (shown once, stored as a SHA-256 hash),
//! passwords (argon2id, strength-checked with zxcvbn), and the reserved names
//! a stored token cannot take.

use chrono::Utc;
use firebreak_domain::access::Scope;
use sha2::{Digest, Sha256};

use crate::NewToken;

/// Every machine token starts with this, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "fbk_";

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn sha256_hex(s: &str) -> String {
    to_hex(&sha256(s.as_bytes()))
}

/// Bytes as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex back to bytes; `None` for an odd length or a non-hex digit.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random hex (from the OS's generator, through UUID v4's 122 random bits each).
pub fn random_hex(uuids: usize) -> String {
    (0..uuids)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect()
}

/// A new machine token: what to show once, and what to store.
pub fn new_token(
    name: &str,
    scopes: Vec<Scope>,
    created_by: &str,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> (String, NewToken) {
    let id = random_hex(1)[..12].to_string();
    let secret = random_hex(2);
    let shown = format!("{TOKEN_PREFIX}{id}_{secret}");
    (
        shown,
        NewToken {
            id,
            name: name.to_string(),
            secret_hash: sha256_hex(&secret),
            scopes,
            created_by: created_by.to_string(),
            at: Utc::now(),
            expires_at,
        },
    )
}

/// Hashes a password with argon2id (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Checks a password against its PHC string. The argon2 work memory (19 MiB
/// for the default cost) is one buffer per thread, reused: verification runs
/// on the few hash worker threads (`offload::hash`), so the process holds at
/// most that many buffers whatever the number of guesses.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::PasswordHash;
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    thread_local! {
        static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) =
        (Params::try_from(&hash), Algorithm::try_from(hash.algorithm))
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < blocks {
            m.resize(blocks, Block::default());
        }
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut m[..blocks])
    });
    computed.is_ok() && constant_time_eq(&out, expected.as_bytes())
}

/// Names a stored token cannot take: the configured tokens' own names (a
/// stored token named `bootstrap` would show in the audit trail as the
/// bootstrap token) and the actors Firebreak writes itself.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let reserved = [
        "bootstrap",
        "engine",
        "automation",
        "local",
        "cli",
        "system",
        "slack",
    ]
    .iter()
    .any(|r| name.eq_ignore_ascii_case(r))
        || ["api.", "ingest."]
            .iter()
            .any(|p| name.to_ascii_lowercase().starts_with(p));
    if reserved {
        return Err(format!(
            "{name:?} is reserved for Firebreak's own identities: choose another name"
        ));
    }
    Ok(())
}

/// The longest user name (the longest a user can be created with).
pub const MAX_USERNAME_BYTES: usize = 100;
/// The longest password.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The weakest password accepted, on zxcvbn's 0-4 scale ("safely
/// unguessable: moderate protection from offline slow-hash scenario").
pub const MIN_PASSWORD_SCORE: u8 = 3;

/// Passwords must be worth hashing: long enough, not built from the user
/// name, and not guessable by the zxcvbn estimator (dictionary words, names,
/// keyboard patterns, dates and repeats, with the user name as a known word).
/// Estimates its strength on the first 100 characters (zxcvbn's work grows
/// quickly with length; a longer password is at least as strong).
pub fn check_password(password: &str, username: &str) -> Result<(), String> {
    if password.chars().count() < 12 {
        return Err("must be at least 12 characters".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    let lower = password.to_lowercase();
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return Err("must not contain the user name".into());
    }
    let head: String = password.chars().take(100).collect();
    let estimate = zxcvbn::zxcvbn(&head, &[username, "firebreak"]);
    let score = u8::from(estimate.score());
    if score < MIN_PASSWORD_SCORE {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning().map(|w| w.to_string()))
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        return Err(format!(
            "is too easy to guess{hint}: use a longer phrase of unrelated words, or a password manager's"
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_shown_once_and_stored_as_a_hash() {
        let (shown, stored) = new_token("alertmanager", vec![Scope::Ingest], "test", None);
        assert!(shown.starts_with("fbk_"));
        let secret = shown.rsplit('_').next().unwrap();
        assert_eq!(stored.secret_hash, sha256_hex(secret));
        assert!(!stored.secret_hash.contains(secret));
        assert_eq!(secret.len(), 64);
    }

    #[test]
    fn passwords_hash_with_argon2id() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong", &h));
        assert!(check_password("short", "ana").is_err());
    }

    #[test]
    fn weak_passwords_are_refused_naming_why() {
        for (password, user) in [
            ("administrator-admin", "admin"),
            ("Ana-Lucia-2024!", "ana-lucia"),
            ("password12345678", "ana"),
            ("qwertyuiopasdfgh", "ana"),
            ("aaaaaaaaaaaaaaaa", "ana"),
        ] {
            assert!(check_password(password, user).is_err(), "{password}");
        }
        assert_eq!(
            check_password("admin admin admin", "admin").unwrap_err(),
            "must not contain the user name"
        );
        for password in ["correct horse battery staple", "a long enough passphrase"] {
            assert_eq!(check_password(password, "ana"), Ok(()), "{password}");
        }
        assert!(check_password(&"x".repeat(1025), "ana").is_err());
    }
}
