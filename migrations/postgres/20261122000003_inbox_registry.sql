-- Retention by age looks rows up by time.
CREATE INDEX IF NOT EXISTS sy_history_created ON sy_history (created_ms);

-- Per user, the newest event of their inbox delivered to a live session:
-- what is after it waits for their next connect. (Inbox events are
-- sy_history rows whose stream is '@inbox <user>'.)
CREATE TABLE IF NOT EXISTS sy_inbox_cursor (
    user_id TEXT   NOT NULL PRIMARY KEY,
    epoch   BIGINT NOT NULL,
    seq     BIGINT NOT NULL
);

-- The connection registry: live sessions of every node. A node refreshes
-- `heartbeat_ms` of its rows; rows of a node that stopped are removed by
-- the others once they are older than `store.registry_ttl_s`.
CREATE TABLE IF NOT EXISTS sy_sessions (
    session_id   TEXT   NOT NULL PRIMARY KEY,
    node         TEXT   NOT NULL,
    protocol     TEXT   NOT NULL,
    user_id      TEXT   NOT NULL,
    connected_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sy_sessions_node ON sy_sessions (node);
CREATE INDEX IF NOT EXISTS sy_sessions_user ON sy_sessions (user_id);
CREATE INDEX IF NOT EXISTS sy_sessions_heartbeat ON sy_sessions (heartbeat_ms);
