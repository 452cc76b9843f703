-- A log stream's labels are stored once, not once per line: a push of
-- 10,000 lines whose stream carries large labels used to write them 10,000
-- times. Lines written from now on keep only their own labels (Loki's
-- structured metadata) in log_lines.labels and point at their stream.
CREATE TABLE log_streams (
    id     TEXT PRIMARY KEY,   -- a hash of the labels
    labels TEXT NOT NULL
);
ALTER TABLE log_lines ADD COLUMN stream_id TEXT REFERENCES log_streams (id);
