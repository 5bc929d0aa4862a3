-- Upstream requests a client request took (retries and failovers included; 0 when none
-- was sent). Rows written before this column existed read 0.
ALTER TABLE usage_records ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
