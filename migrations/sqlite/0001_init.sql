-- Client keys issued by the gateway. Only a SHA-256 hash of each key is stored.
CREATE TABLE client_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    key_hash    TEXT    NOT NULL UNIQUE,
    key_prefix  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,          -- unix seconds
    expires_at  INTEGER,                   -- unix seconds, NULL = never
    revoked_at  INTEGER                    -- unix seconds, NULL = active
);

-- One row per proxied request. Tokens follow OpenAI's convention: input_tokens includes
-- cached (cache-read) tokens; cached_tokens is that cached part.
CREATE TABLE usage_records (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms           INTEGER NOT NULL,
    request_id      TEXT    NOT NULL,
    key_id          INTEGER NOT NULL REFERENCES client_keys(id),
    api             TEXT    NOT NULL,      -- openai | anthropic
    model           TEXT    NOT NULL,
    stream          INTEGER NOT NULL,
    status          INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,      -- ok | upstream_error | client_cancelled | upstream_failed | ...
    input_tokens    INTEGER NOT NULL,
    output_tokens   INTEGER NOT NULL,
    cached_tokens   INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    estimated       INTEGER NOT NULL,      -- 1 when the upstream reported no usage
    latency_ms      INTEGER NOT NULL,
    ttfb_ms         INTEGER
);
CREATE INDEX usage_records_key_ts ON usage_records(key_id, ts_ms);
