-- Which upstream account (`provider/account`) answered each request.
ALTER TABLE usage_records ADD COLUMN upstream TEXT;

-- Concurrency limits learned per upstream account and model (AIMD), restored on start so a
-- restart does not cause a burst of 429s.
CREATE TABLE upstream_limits (
    account     TEXT    NOT NULL,
    model       TEXT    NOT NULL,
    limit_value REAL    NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (account, model)
);
