//! A small migration runner: numbered SQL files embedded in the binary, applied in
//! order, each in its own transaction, with a checksum so that an edited migration
//! is refused rather than silently diverging.

use sha2::{Digest, Sha256};

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Every migration, in order, for one dialect's directory: the list is
/// written once and both dialects must have each file.
macro_rules! migrations {
    ($dialect:literal) => {
        migrations!(@ $dialect;
            1, "0001", "events_incidents_timeline";
            2, "0002", "remediation";
            3, "0003", "postmortems";
            4, "0004", "slack";
            5, "0005", "sweep_index";
            6, "0006", "action_leases";
            7, "0007", "access";
            8, "0008", "log_streams";
            9, "0009", "flag_definitions";
            10, "0010", "rollouts";
            11, "0011", "insights";
            12, "0012", "service_timeline";
            13, "0013", "incident_response";
            14, "0014", "action_items";
            15, "0015", "presence";
            16, "0016", "action_expiry";
        )
    };
    (@ $dialect:literal; $($version:literal, $file:literal, $name:literal;)*) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $dialect, "/", $file, "_", $name, ".sql")),
        }),*]
    };
}

pub(crate) const POSTGRES: &[Migration] = migrations!("postgres");

pub(crate) const SQLITE: &[Migration] = migrations!("sqlite");

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS firebreak_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL
)";

/// Decides what to apply given what the database has applied already.
pub(crate) fn pending<'a>(
    migrations: &'a [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<&'a Migration>, crate::StoreError> {
    for (version, checksum) in applied {
        match migrations.iter().find(|m| m.version == *version) {
            None => {
                return Err(crate::StoreError::Migration(format!(
                    "the database has migration {version}, which this firebreak does not know: it was migrated by a newer version"
                )))
            }
            Some(m) if &m.checksum() != checksum => {
                return Err(crate::StoreError::Migration(format!(
                    "migration {} ({}) was changed after it was applied; migrations are append-only",
                    m.version, m.name
                )))
            }
            Some(_) => {}
        }
    }
    Ok(migrations
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}

/// Applies what `set` has that `conn` has not, each migration and its record
/// in one transaction. One body for both dialects (a macro: sqlx's
/// connection types share no trait that carries all of this).
macro_rules! apply_pending {
    ($conn:expr, $set:expr) => {{
        let conn = $conn;
        sqlx::query($crate::migrate::CREATE_TABLE)
            .execute(&mut *conn)
            .await?;
        let applied: Vec<(i64, String)> =
            sqlx::query_as("SELECT version, checksum FROM firebreak_migrations ORDER BY version")
                .fetch_all(&mut *conn)
                .await?;
        for m in $crate::migrate::pending($set, &applied)? {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::Executor::execute(&mut *tx, m.sql)
                .await
                .map_err(|e| {
                    $crate::StoreError::Migration(format!(
                        "migration {} ({}) failed: {e}",
                        m.version, m.name
                    ))
                })?;
            sqlx::query(
                "INSERT INTO firebreak_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
        }
        Ok(())
    }};
}
pub(crate) use apply_pending;
