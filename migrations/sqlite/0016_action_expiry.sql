-- Approvals expire: a held action not decided within automation.approval_ttl
-- becomes `expired` and is never executed.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt.
CREATE TABLE actions_v16 (
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
                         'failed', 'denied', 'dry_run', 'suppressed', 'reverting', 'reverted',
                         'expired')),
    reason           TEXT,
    spec             TEXT NOT NULL,
    previous_state   TEXT,
    result           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    decided_by       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    not_before       INTEGER NOT NULL,
    lease_until      INTEGER,
    lease_owner      TEXT,
    requested_by     TEXT NOT NULL DEFAULT 'engine'
);
INSERT INTO actions_v16 SELECT id, dedupe_key, playbook, playbook_version, step_index, kind,
    target, incident_id, trigger_id, status, reason, spec, previous_state, result, attempts,
    decided_by, created_at, updated_at, not_before, lease_until, lease_owner, requested_by
    FROM actions;
DROP TABLE actions;
ALTER TABLE actions_v16 RENAME TO actions;
CREATE UNIQUE INDEX actions_one_running_per_target ON actions (target)
    WHERE status IN ('running', 'reverting');
CREATE INDEX actions_ready ON actions (not_before, id) WHERE status IN ('pending', 'running', 'reverting');
CREATE INDEX actions_created ON actions (created_at);
CREATE INDEX actions_incident ON actions (incident_id, id);
-- One decision per target reads the actions on a target, newest first.
CREATE INDEX actions_target ON actions (target, id);
