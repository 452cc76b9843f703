-- Access control: machine tokens (stored only as a hash of their secret),
-- local users (argon2id password hashes), browser sessions (stored as a
-- hash of the cookie), and a tamper-evident audit trail.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,          -- the public part of fbk_<id>_<secret>
    name         TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,             -- hex SHA-256 of the secret
    scopes       JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    created_by   TEXT NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,            -- PHC string, argon2id
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'operator', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL,
    created_by    TEXT NOT NULL,
    disabled_at   TIMESTAMPTZ
);

CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,            -- hex SHA-256 of the cookie value
    username   TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Each audit row carries the hash of its content chained to the row
-- before it; `firebreak audit verify` recomputes the chain. Rows written
-- before this migration have no hash; the chain starts after them.
ALTER TABLE audit ADD COLUMN prev_hash TEXT;
ALTER TABLE audit ADD COLUMN hash TEXT;

CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();
