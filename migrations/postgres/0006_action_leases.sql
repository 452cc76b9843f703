-- One remediation core: a revert holds its target under a lease like any
-- running action (status `reverting`), every lease names its holder so a
-- restarted process reclaims what it held at once, and each action records who
-- asked for it (the engine for playbooks, a person's identity otherwise).
ALTER TABLE actions DROP CONSTRAINT actions_status_check;
ALTER TABLE actions ADD CONSTRAINT actions_status_check CHECK (status IN ('pending', 'held',
    'running', 'succeeded', 'failed', 'denied', 'dry_run', 'suppressed', 'reverting', 'reverted'));
ALTER TABLE actions ADD COLUMN lease_owner TEXT;
ALTER TABLE actions ADD COLUMN requested_by TEXT NOT NULL DEFAULT 'engine';

DROP INDEX actions_one_running_per_target;
CREATE UNIQUE INDEX actions_one_running_per_target ON actions (target)
    WHERE status IN ('running', 'reverting');
DROP INDEX actions_ready;
CREATE INDEX actions_ready ON actions (not_before, id) WHERE status IN ('pending', 'running', 'reverting');
