//! The audit trail's hash chain: each row hashed with the one before it,
//! keyed (HMAC) when the process has the key, so that a removed or changed
//! row shows.

use super::*;

/// The key of the audit chain's HMAC: set once per process, before the store
/// writes, from outside the database (`audit.key`, or the key file beside
/// the data). Without one, rows are chained with plain SHA-256 (as before
/// keys existed), which anyone who can write the table can recompute.
pub(super) static AUDIT_KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A keyed row's hash: `k1:` and the HMAC-SHA256 hex.
pub(super) const KEYED: &str = "k1:";

/// Sets the audit chain's key for this process; `false` if another key was
/// set already.
pub fn set_audit_key(key: &[u8]) -> bool {
    AUDIT_KEY.set(key.to_vec()).is_ok() || AUDIT_KEY.get().is_some_and(|k| k == key)
}

/// Appends audit rows, each hashed with the one before it, under a lock.
/// Ids are given here (the last id plus one), not by the database's
/// sequence, so a rolled-back write leaves no gap: in a keyed chain a
/// missing id is a removed row.
pub(super) async fn write_audit<T: DialectTx>(tx: &mut T, rows: &[NewAudit]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    tx.lock(&[firebreak_domain::ids::lock_key("firebreak:audit")])
        .await?;
    let last = tx
        .fetch(q("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"))
        .await?;
    let mut last_id = last.first().map(|r| r.int("id")).transpose()?.unwrap_or(0);
    let mut prev = last
        .first()
        .map(|r| r.opt_text("hash"))
        .transpose()?
        .flatten()
        .unwrap_or_default();
    for r in rows {
        let at = micros_only(r.at);
        let id = last_id + 1;
        let hash = match AUDIT_KEY.get() {
            Some(key) => keyed_audit_hash(key, &prev, id, r, at),
            None => audit_hash(&prev, r, at),
        };
        tx.execute(
            q("INSERT INTO audit (id, at, actor, event, action_id, incident_id, playbook, playbook_version, detail,
                                  prev_hash, hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .bind(id)
            .bind(at)
            .bind(&r.actor)
            .bind(&r.event)
            .bind(r.action_id)
            .bind(r.incident_id)
            .bind(&r.playbook)
            .bind(&r.playbook_version)
            .bind(&r.detail)
            .bind(prev.clone())
            .bind(hash.clone()),
        )
        .await?;
        last_id = id;
        prev = hash;
    }
    Ok(())
}

/// Both stores keep microseconds: hash what is stored.
fn micros_only(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The hash of an audit row: SHA-256 over the previous row's hash and the
/// row's content in a canonical form (keys sorted, times in microseconds).
pub fn audit_hash(prev: &str, r: &NewAudit, at: DateTime<Utc>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(audit_content(r, at).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What an audit row's hash covers besides its place in the chain: its
/// content as canonical JSON (keys sorted, the time in microseconds).
fn audit_content(r: &NewAudit, at: DateTime<Utc>) -> String {
    let mut text = String::new();
    canonical(
        &serde_json::json!({
            "at": at.timestamp_micros(), "actor": r.actor, "event": r.event,
            "action_id": r.action_id, "incident_id": r.incident_id,
            "playbook": r.playbook, "playbook_version": r.playbook_version,
            "detail": r.detail,
        }),
        &mut text,
    );
    text
}

/// The hash of an audit row in a keyed chain: HMAC-SHA256, under a key kept
/// outside the database, over the previous row's hash, the row's id and its
/// content in canonical form.
pub fn keyed_audit_hash(
    key: &[u8],
    prev: &str,
    id: i64,
    r: &NewAudit,
    at: DateTime<Utc>,
) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this cannot happen.
        Err(_) => return String::new(),
    };
    mac.update(prev.as_bytes());
    mac.update(b"\n");
    mac.update(id.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(audit_content(r, at).as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(KEYED.len() + 64);
    out.push_str(KEYED);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// JSON with object keys sorted at every level, whatever order the value
/// (or a database's JSON type) keeps them in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}
