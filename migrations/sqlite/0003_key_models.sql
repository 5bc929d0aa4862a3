-- Per client key model rules: allowed models (comma-separated patterns, `*` wildcard; NULL
-- = any) and a model that replaces whatever the client asks for (NULL = none).
ALTER TABLE client_keys ADD COLUMN models TEXT;
ALTER TABLE client_keys ADD COLUMN force_model TEXT;
