-- Remediation: actions claimed by playbooks, the append-only audit trail, the
-- built-in kill switch store and shared automation settings. Times are INTEGER
-- microseconds since the Unix epoch (UTC).

-- One row per (playbook, step, target, incident): the unique dedupe_key is how the
-- database, not luck, makes an action happen once across duplicate deliveries,
-- restarts and engine replicas. A row is claimed before anything is called.
CREATE TABLE actions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key       TEXT NOT NULL UNIQUE,
    playbook         TEXT NOT NULL,
    playbook_version TEXT NOT NULL,
    step_index       INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    target           TEXT NOT NULL,
    incident_id      INTEGER REFERENCES incidents (id),
    trigger_id       TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'held', 'running', 'succeeded',
                         'failed', 'denied', 'dry_run', 'suppressed', 'reverted')),
    reason           TEXT,
    spec             TEXT NOT NULL,
    previous_state   TEXT,
    result           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    decided_by       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    not_before       INTEGER NOT NULL,
    lease_until      INTEGER
);
-- One action at a time per target (a flag, a service's deploys).
CREATE UNIQUE INDEX actions_one_running_per_target ON actions (target) WHERE status = 'running';
CREATE INDEX actions_ready ON actions (not_before, id) WHERE status IN ('pending', 'running');
CREATE INDEX actions_created ON actions (created_at);
CREATE INDEX actions_incident ON actions (incident_id, id);

CREATE TABLE audit (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    at               INTEGER NOT NULL,
    actor            TEXT NOT NULL,
    event            TEXT NOT NULL,
    action_id        INTEGER,
    incident_id      INTEGER,
    playbook         TEXT,
    playbook_version TEXT,
    detail           TEXT NOT NULL
);
CREATE INDEX audit_action ON audit (action_id, id);
CREATE INDEX audit_incident ON audit (incident_id, id);

-- The audit trail is append-only, enforced by the database.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;

-- Built-in kill switches, served over OFREP.
CREATE TABLE flags (
    key         TEXT PRIMARY KEY,
    enabled     INTEGER NOT NULL,
    description TEXT,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL
);

-- Settings every process shares (automation pause).
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
