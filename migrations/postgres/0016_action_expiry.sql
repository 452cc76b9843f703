-- Approvals expire: a held action not decided within automation.approval_ttl
-- becomes `expired` and is never executed.
ALTER TABLE actions DROP CONSTRAINT actions_status_check;
ALTER TABLE actions ADD CONSTRAINT actions_status_check CHECK (status IN ('pending', 'held',
    'running', 'succeeded', 'failed', 'denied', 'dry_run', 'suppressed', 'reverting', 'reverted',
    'expired'));

-- One decision per target reads the actions on a target, newest first.
CREATE INDEX actions_target ON actions (target, id);
