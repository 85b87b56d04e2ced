-- A stream fed by several partitions (a user's inbox, a routed topic) is in
-- id order only per source partition: each history row names the partition
-- that routed it (NULL: written before rows did), and inbox cursors are kept
-- per (user, epoch, partition), -1 for the unnamed rows. sy_inbox_cursor
-- stays, read only, as where partitions without a cursor here start.
ALTER TABLE sy_history ADD COLUMN part INTEGER;

CREATE TABLE IF NOT EXISTS sy_inbox_cursors (
    user_id TEXT    NOT NULL,
    epoch   BIGINT  NOT NULL,
    part    INTEGER NOT NULL,
    seq     BIGINT  NOT NULL,
    PRIMARY KEY (user_id, epoch, part)
);
