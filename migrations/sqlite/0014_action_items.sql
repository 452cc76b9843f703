-- Postmortem action items: what a team decided to do after an incident, with
-- an owner, a due date, a priority and a status, and where a tracker holds
-- it. The export columns are the tracker outbox: an item waiting to be
-- exported (export_state 'pending' or 'failed') is claimed by one process at
-- a time (export_claimed_until) and tried again at export_next_at. Times are
-- INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE action_items (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id          INTEGER NOT NULL REFERENCES incidents (id),
    title                TEXT NOT NULL,
    owner                TEXT,
    due                  TEXT,
    priority             TEXT NOT NULL DEFAULT 'medium'
        CHECK (priority IN ('high', 'medium', 'low')),
    status               TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'done', 'wont_do')),
    created_by           TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    tracker              TEXT,
    tracker_key          TEXT,
    tracker_url          TEXT,
    export_state         TEXT CHECK (export_state IS NULL OR export_state IN ('pending', 'exported', 'failed')),
    export_error         TEXT,
    export_attempts      INTEGER NOT NULL DEFAULT 0,
    export_next_at       INTEGER,
    export_claimed_until INTEGER
);
CREATE INDEX action_items_incident ON action_items (incident_id, id);
CREATE INDEX action_items_open ON action_items (status, due);
CREATE UNIQUE INDEX action_items_tracker ON action_items (tracker, tracker_key)
    WHERE tracker_key IS NOT NULL;
CREATE INDEX action_items_outbox ON action_items (export_next_at)
    WHERE export_state IN ('pending', 'failed');
