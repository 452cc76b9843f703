-- Who has a postmortem draft open, shared by every api process: a person's
-- editor says so every few seconds; rows older than the presence window are
-- removed as others are written. Times are INTEGER microseconds (UTC).
CREATE TABLE presence (
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    who         TEXT NOT NULL,
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (incident_id, who)
);
CREATE INDEX presence_seen ON presence (seen_at);
