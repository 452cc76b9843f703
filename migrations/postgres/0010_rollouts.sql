-- Guarded rollouts of built-in flags: a plan of percentage steps, where the
-- rollout stands (step, run generation), and why it waits or stopped. At most
-- one active (running or paused) rollout per flag, enforced here.
CREATE TABLE rollouts (
    id              BIGSERIAL PRIMARY KEY,
    flag            TEXT NOT NULL,
    plan            JSONB NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('running', 'paused', 'completed', 'aborted', 'killed')),
    step            INTEGER,
    generation      INTEGER NOT NULL DEFAULT 0,
    step_started_at TIMESTAMPTZ,
    action_id       BIGINT,
    waiting         TEXT,
    reason          TEXT,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX rollouts_one_active_per_flag ON rollouts (flag) WHERE status IN ('running', 'paused');
CREATE INDEX rollouts_flag ON rollouts (flag, id);

-- A rollout's own timeline: every step, hold, guard verdict and command,
-- once each (ref_id), whether or not an incident is open.
CREATE TABLE rollout_events (
    id         BIGSERIAL PRIMARY KEY,
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    at         TIMESTAMPTZ NOT NULL,
    kind       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    summary    TEXT NOT NULL,
    ref_id     TEXT NOT NULL,
    UNIQUE (rollout_id, ref_id)
);

-- Flag lifecycle: who owns a flag, when it was created and last evaluated
-- (last changed is updated_at).
ALTER TABLE flags ADD COLUMN owner TEXT;
ALTER TABLE flags ADD COLUMN created_at TIMESTAMPTZ;
ALTER TABLE flags ADD COLUMN last_evaluated_at TIMESTAMPTZ;
UPDATE flags SET created_at = updated_at;
