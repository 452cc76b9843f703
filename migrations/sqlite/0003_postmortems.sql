-- Postmortem drafts: the current document per incident, and every revision.
-- `generated` is the last machine render, so a regeneration can tell which
-- machine-owned sections a person has edited since. Times are INTEGER
-- microseconds since the Unix epoch (UTC).
CREATE TABLE postmortems (
    incident_id INTEGER PRIMARY KEY REFERENCES incidents (id),
    revision    INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('draft', 'in_review', 'published')),
    markdown    TEXT NOT NULL,
    generated   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE postmortem_revisions (
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    revision    INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    markdown    TEXT NOT NULL,
    author      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (incident_id, revision)
);
