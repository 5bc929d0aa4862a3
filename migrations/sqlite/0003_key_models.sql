-- Per client key model rules: allowed models (comma-separated patterns, `*` wildcard; NULL
-- = any), a model that replaces whatever the client asks for (NULL = none), and how
-- reasoning is shown (passthrough | think_tags | strip; NULL = the routing default).
ALTER TABLE client_keys ADD COLUMN models TEXT;
ALTER TABLE client_keys ADD COLUMN force_model TEXT;
ALTER TABLE client_keys ADD COLUMN reasoning TEXT;
