-- Access control: machine tokens (stored only as a hash of their secret),
-- local users (argon2id password hashes), browser sessions (stored as a
-- hash of the cookie), and a tamper-evident audit trail. Times are INTEGER
-- microseconds since the Unix epoch (UTC). SQLite has no TRUNCATE; DELETE
-- is refused by the triggers of migration 0002.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'operator', 'admin')),
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    disabled_at   INTEGER
);

CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;
