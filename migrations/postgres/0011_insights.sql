-- Insights: when a deploy's commits were made (change lead time), and a
-- person's word on whether a suspect change caused its incident (change
-- fail rate prefers it over the automatic top suspect).
ALTER TABLE deploys ADD COLUMN commit_times JSONB;
ALTER TABLE incident_changes ADD COLUMN cause BOOLEAN;
ALTER TABLE incident_changes ADD COLUMN cause_by TEXT;
ALTER TABLE incident_changes ADD COLUMN cause_at TIMESTAMPTZ;
CREATE INDEX incidents_opened ON incidents (opened_at);
