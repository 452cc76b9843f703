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

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "events_incidents_timeline",
        sql: include_str!("../../../migrations/postgres/0001_events_incidents_timeline.sql"),
    },
    Migration {
        version: 2,
        name: "remediation",
        sql: include_str!("../../../migrations/postgres/0002_remediation.sql"),
    },
    Migration {
        version: 3,
        name: "postmortems",
        sql: include_str!("../../../migrations/postgres/0003_postmortems.sql"),
    },
    Migration {
        version: 4,
        name: "slack",
        sql: include_str!("../../../migrations/postgres/0004_slack.sql"),
    },
    Migration {
        version: 5,
        name: "sweep_index",
        sql: include_str!("../../../migrations/postgres/0005_sweep_index.sql"),
    },
];

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "events_incidents_timeline",
        sql: include_str!("../../../migrations/sqlite/0001_events_incidents_timeline.sql"),
    },
    Migration {
        version: 2,
        name: "remediation",
        sql: include_str!("../../../migrations/sqlite/0002_remediation.sql"),
    },
    Migration {
        version: 3,
        name: "postmortems",
        sql: include_str!("../../../migrations/sqlite/0003_postmortems.sql"),
    },
    Migration {
        version: 4,
        name: "slack",
        sql: include_str!("../../../migrations/sqlite/0004_slack.sql"),
    },
    Migration {
        version: 5,
        name: "sweep_index",
        sql: include_str!("../../../migrations/sqlite/0005_sweep_index.sql"),
    },
];

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
