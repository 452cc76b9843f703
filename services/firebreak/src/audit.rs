//! The audit trail's protection that lives outside the database: the key of
//! its HMAC chain, and a witness of the chain's head.
//!
//! The database enforces append-only with triggers, but its owner can drop
//! them. With the key outside the database, an edited row cannot be given a
//! valid hash again; with the head recorded outside it as it grows (a witness
//! file, one line per new head, and a log line), a removed tail is seen:
//! `firebreak audit verify` checks both.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use firebreak_store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The shortest key accepted in `audit.key`.
const MIN_KEY_CHARS: usize = 32;

/// Sets this process's audit key: `audit.key`, else the key file
/// `<data_dir>/audit.key`, made (readable by its owner only) when missing.
pub fn install_key(config: &Config) -> anyhow::Result<()> {
    let key = match &config.audit_key {
        Some(k) => {
            if k.expose().len() < MIN_KEY_CHARS {
                bail!(
                    "key `audit.key`: must be at least {MIN_KEY_CHARS} characters (e.g. openssl rand -hex 32)"
                );
            }
            k.expose().as_bytes().to_vec()
        }
        None => {
            let path = config.data_dir.join("audit.key");
            if !config.database_url.0.starts_with("sqlite:") {
                tracing::warn!(
                    key_file = %path.display(),
                    "audit.key is not set: this process chains the audit trail with its own key file; every Firebreak process sharing this database must use the same key (set FIREBREAK_AUDIT__KEY on all of them)"
                );
            }
            key_file(&path)?
        }
    };
    if !firebreak_store::set_audit_key(&key) {
        bail!("the audit key was already set to another value in this process");
    }
    Ok(())
}

fn key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(k) if k.trim().len() >= MIN_KEY_CHARS => return Ok(k.trim().as_bytes().to_vec()),
        Ok(_) => bail!(
            "the audit key file {} is shorter than {MIN_KEY_CHARS} characters: restore it from a backup, or set audit.key",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("reading the audit key file {}", path.display()))
        }
    }
    let key = firebreak_store::credentials::random_hex(2);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut f) => {
            f.write_all(key.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing the audit key file {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the audit key file: keep it (and back it up) apart from the database");
            Ok(key.into_bytes())
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => key_file(path),
        Err(e) => Err(e).with_context(|| format!("creating the audit key file {}", path.display())),
    }
}

/// A head of the chain: a row's id and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub id: i64,
    pub hash: String,
}

impl Head {
    /// `ID:HASH`, as the log and `--expect-head` write it.
    pub fn parse(s: &str) -> Result<Head, String> {
        let (id, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not ID:HASH (e.g. 1042:k1:3fa9…)"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a row id"))?;
        if hash.trim().is_empty() {
            return Err(format!("{s:?} has no hash"));
        }
        Ok(Head {
            id,
            hash: hash.trim().to_string(),
        })
    }
}

/// The last head a witness file recorded.
pub fn last_witnessed(path: &Path) -> anyhow::Result<Option<Head>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(id), Some(hash)) => Ok(Some(Head::parse(&format!("{id}:{hash}")).map_err(|e| {
            anyhow::anyhow!("the witness {} ends with a bad line: {e}", path.display())
        })?)),
        _ => bail!(
            "the witness {} ends with a bad line: {line:?}",
            path.display()
        ),
    }
}

/// Whether the store still holds `head` as it was recorded.
pub async fn check_head(store: &dyn Store, head: &Head) -> anyhow::Result<Result<(), String>> {
    Ok(match store.audit_hash_at(Some(head.id)).await? {
        None => Err(format!(
            "row {} was recorded as the head and is gone: the rows from it on were removed",
            head.id
        )),
        Some((_, hash)) if hash.as_deref() != Some(head.hash.as_str()) => Err(format!(
            "row {} does not have the hash recorded for it: the trail was rewritten",
            head.id
        )),
        Some(_) => Ok(()),
    })
}

/// Records the head in the witness file, the log and the
/// `firebreak_audit_head_id` gauge each time it moves.
pub async fn witness(
    store: Arc<dyn Store>,
    metrics: Arc<firebreak_domain::metrics::Metrics>,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut last = match last_witnessed(&path) {
        Ok(last) => last,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the audit witness; not recording the head");
            return;
        }
    };
    if let Some(seen) = &last {
        match check_head(store.as_ref(), seen).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => tracing::error!(
                witness = %path.display(),
                "the audit trail does not hold what its witness recorded: {why}; run firebreak audit verify"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot check the audit witness yet"),
        }
    }
    loop {
        match store.audit_hash_at(None).await {
            Ok(Some((id, Some(hash)))) => {
                metrics.audit_head(u64::try_from(id).unwrap_or(0));
                if last.as_ref().is_none_or(|h| h.id != id) {
                    let at = chrono::Utc::now().to_rfc3339();
                    let line = format!("{id} {hash} {at}\n");
                    let written = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(line.as_bytes()));
                    if let Err(e) = written {
                        tracing::warn!(witness = %path.display(), error = %e, "cannot record the audit head");
                    }
                    tracing::info!(audit.head_id = id, audit.head_hash = %hash, "audit trail head");
                    last = Some(Head { id, hash });
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the audit head"),
        }
        // After a stop is asked for, one more round records the last rows.
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
