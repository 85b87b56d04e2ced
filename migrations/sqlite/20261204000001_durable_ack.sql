-- Ids of `epoch` up to `upto` may have been handed out: the local bus
-- reserves a block here before it gives out an id of it, and after a crash
-- resumes above the last block (the unused rest is skipped).
CREATE TABLE IF NOT EXISTS sy_id_blocks (
    epoch BIGINT NOT NULL PRIMARY KEY,
    upto  BIGINT NOT NULL
);

-- Idempotency keys of recent publishes on the local bus, committed with
-- their events: a publish retried after a crash gets the id it was given.
CREATE TABLE IF NOT EXISTS sy_idempotency (
    key        TEXT   NOT NULL PRIMARY KEY,
    epoch      BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sy_idempotency_by_age ON sy_idempotency (created_ms);
