-- Messages Firebreak posted to Slack, one row per timeline entry it announced.
-- Claiming the row first makes each announcement happen once across processes;
-- the first message of an incident is its thread. Times are INTEGER
-- microseconds since the Unix epoch (UTC).
CREATE TABLE slack_messages (
    seq         INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    channel     TEXT,
    ts          TEXT,
    claimed_at  INTEGER NOT NULL
);
CREATE INDEX slack_messages_incident ON slack_messages (incident_id, seq);
