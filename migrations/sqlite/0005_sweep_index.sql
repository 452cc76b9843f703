-- The resolution sweep asks "does this open incident still have a firing
-- alert?"; with this index that is one index probe per open incident instead
-- of aggregating every alert an incident ever had.
CREATE INDEX incident_alerts_status ON incident_alerts (incident_id, status);

-- Gate results find the incidents of their deploy by deploy id.
CREATE INDEX incident_changes_deploy ON incident_changes (deploy_id);
