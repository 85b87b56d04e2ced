-- Every plugin set a node loaded or refused: which files (sha256), when, by
-- which node, on what trigger, and why a candidate was refused.
CREATE TABLE IF NOT EXISTS sy_plugin_deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    node        TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL,
    trigger     TEXT   NOT NULL,
    applied     BIGINT NOT NULL,
    plugins     TEXT   NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS sy_plugin_deployments_at ON sy_plugin_deployments (at_ms);
