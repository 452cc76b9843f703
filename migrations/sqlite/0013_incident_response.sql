-- Incident response by people: who acknowledged and when, the severity a
-- person declared (on the configured scale; NULL: mapped from the alerts'
-- severity label), the response stage, the commander, a summary, and who
-- declared an incident by hand (NULL: alerts opened it).
ALTER TABLE incidents ADD COLUMN acknowledged_at INTEGER;
ALTER TABLE incidents ADD COLUMN acknowledged_by TEXT;
ALTER TABLE incidents ADD COLUMN declared_severity TEXT;
ALTER TABLE incidents ADD COLUMN stage TEXT
    CHECK (stage IS NULL OR stage IN ('investigating', 'identified', 'monitoring'));
ALTER TABLE incidents ADD COLUMN commander TEXT;
ALTER TABLE incidents ADD COLUMN summary TEXT;
ALTER TABLE incidents ADD COLUMN declared_by TEXT;
