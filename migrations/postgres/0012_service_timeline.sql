-- A service's own timeline, for what concerns it while no incident is open:
-- rollout controllers consulting Firebreak as their gate (once per revision
-- and verdict, ref_id).
CREATE TABLE service_timeline (
    id      BIGSERIAL PRIMARY KEY,
    service TEXT NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    kind    TEXT NOT NULL,
    source  TEXT NOT NULL,
    summary TEXT NOT NULL,
    ref_id  TEXT NOT NULL,
    UNIQUE (service, ref_id)
);
CREATE INDEX service_timeline_at ON service_timeline (service, at);
