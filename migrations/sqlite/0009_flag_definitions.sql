-- A built-in flag may carry a flagd flag definition (variants, default
-- variant, targeting as JSON Logic), as JSON text. `enabled` stays the kill
-- switch: false serves the definition's off variant to everyone, and turning
-- it back on restores the definition untouched. NULL: a plain on/off flag.
ALTER TABLE flags ADD COLUMN definition TEXT;
