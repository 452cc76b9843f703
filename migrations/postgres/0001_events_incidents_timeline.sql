-- Firebreak schema, PostgreSQL. Append-only: never edit a migration once released;
-- add a new numbered file instead (the runner refuses changed checksums).

CREATE TABLE incidents (
    id          BIGSERIAL PRIMARY KEY,
    group_key   TEXT NOT NULL,
    service     TEXT,
    environment TEXT,
    title       TEXT NOT NULL,
    severity    TEXT,
    status      TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    opened_at   TIMESTAMPTZ NOT NULL,
    resolved_at TIMESTAMPTZ,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The database, not luck, keeps one open incident per group.
CREATE UNIQUE INDEX incidents_one_open_per_group ON incidents (group_key) WHERE status = 'open';
CREATE INDEX incidents_group_latest ON incidents (group_key, id DESC);
CREATE INDEX incidents_status_id ON incidents (status, id DESC);
CREATE INDEX incidents_service_id ON incidents (service, id DESC);

-- Every alert notification Firebreak processed, once (id derived from fingerprint,
-- status and start). These rows are also the alert entries of the timeline
-- (read together with the timeline table), so an alert is written once.
-- Labels are JSON, not JSONB: written once per alert on the hot path and only
-- read back whole, so the binary conversion is not worth it.
CREATE TABLE alert_events (
    id               TEXT PRIMARY KEY,
    incident_id      BIGINT REFERENCES incidents (id),
    fingerprint      TEXT NOT NULL,
    status           TEXT NOT NULL,
    alertname        TEXT NOT NULL,
    labels           JSON NOT NULL,
    annotations      JSON NOT NULL,
    starts_at        TIMESTAMPTZ NOT NULL,
    ends_at          TIMESTAMPTZ,
    occurred_at      TIMESTAMPTZ NOT NULL,
    generator_url    TEXT NOT NULL,
    truncated_alerts BIGINT NOT NULL DEFAULT 0,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alert_events_incident_time ON alert_events (incident_id, occurred_at);

-- The current state of each alert within an incident.
CREATE TABLE incident_alerts (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    fingerprint TEXT NOT NULL,
    alertname   TEXT NOT NULL,
    labels      JSON NOT NULL,
    status      TEXT NOT NULL,
    starts_at   TIMESTAMPTZ NOT NULL,
    ends_at     TIMESTAMPTZ,
    PRIMARY KEY (incident_id, fingerprint)
);

CREATE TABLE deploys (
    id               TEXT PRIMARY KEY,
    service          TEXT NOT NULL,
    environment      TEXT,
    version          TEXT NOT NULL,
    previous_version TEXT,
    status           TEXT NOT NULL,
    strategy         TEXT,
    step             TEXT,
    started_at       TIMESTAMPTZ NOT NULL,
    finished_at      TIMESTAMPTZ,
    commit_sha       TEXT,
    url              TEXT,
    actor            TEXT,
    flags            JSONB NOT NULL DEFAULT '[]',
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deploys_service_started ON deploys (service, started_at DESC);

CREATE TABLE gate_results (
    id           TEXT PRIMARY KEY,
    service      TEXT NOT NULL,
    environment  TEXT,
    version      TEXT,
    deploy_id    TEXT,
    gate         TEXT NOT NULL,
    metric       TEXT,
    comparison   TEXT,
    threshold    DOUBLE PRECISION,
    baseline     DOUBLE PRECISION,
    observed     DOUBLE PRECISION,
    window_text  TEXT,
    step         TEXT,
    verdict      TEXT NOT NULL,
    evaluated_at TIMESTAMPTZ NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX gate_results_deploy ON gate_results (deploy_id);
CREATE INDEX gate_results_service ON gate_results (service, evaluated_at DESC);

CREATE TABLE log_lines (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    environment TEXT,
    at          TIMESTAMPTZ NOT NULL,
    level       TEXT,
    message     TEXT NOT NULL,
    labels      JSON NOT NULL
);
CREATE INDEX log_lines_service_at ON log_lines (service, at);

CREATE TABLE incident_changes (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    deploy_id   TEXT NOT NULL REFERENCES deploys (id),
    PRIMARY KEY (incident_id, deploy_id)
);

CREATE TABLE incident_gates (
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    gate_id     TEXT NOT NULL REFERENCES gate_results (id),
    PRIMARY KEY (incident_id, gate_id)
);

-- Timeline entries other than alerts: lifecycle, deploys, gates (and later
-- actions and notes).
CREATE TABLE timeline (
    id          BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    at          TIMESTAMPTZ NOT NULL,
    kind        TEXT NOT NULL,
    source      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    ref_id      TEXT NOT NULL,
    UNIQUE (incident_id, kind, ref_id)
);
CREATE INDEX timeline_incident_at ON timeline (incident_id, at, id);
