-- Who has a postmortem draft open, shared by every api process: a person's
-- editor says so every few seconds; rows older than the presence window are
-- removed as others are written.
CREATE TABLE presence (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    who         TEXT NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (incident_id, who)
);
CREATE INDEX presence_seen ON presence (seen_at);
