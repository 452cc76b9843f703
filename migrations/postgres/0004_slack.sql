-- Messages Firebreak posted to Slack, one row per timeline entry it announced.
-- Claiming the row first makes each announcement happen once across processes;
-- the first message of an incident is its thread.
CREATE TABLE slack_messages (
    seq         BIGINT PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    channel     TEXT,
    ts          TEXT,
    claimed_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX slack_messages_incident ON slack_messages (incident_id, seq);
