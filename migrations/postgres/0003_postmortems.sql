-- Postmortem drafts: the current document per incident, and every revision.
-- `generated` is the last machine render, so a regeneration can tell which
-- machine-owned sections a person has edited since.
CREATE TABLE postmortems (
    incident_id BIGINT PRIMARY KEY REFERENCES incidents (id),
    revision    BIGINT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('draft', 'in_review', 'published')),
    markdown    TEXT NOT NULL,
    generated   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE postmortem_revisions (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    revision    BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    markdown    TEXT NOT NULL,
    author      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (incident_id, revision)
);
