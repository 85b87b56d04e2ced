-- Events and where they went, for replay on reconnect.
CREATE TABLE IF NOT EXISTS sy_events (
    epoch      BIGINT  NOT NULL,
    seq        BIGINT  NOT NULL,
    topic      TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    headers    TEXT    NOT NULL,
    sender     TEXT,
    created_ms BIGINT  NOT NULL,
    PRIMARY KEY (epoch, seq)
);

-- One row per topic an event was routed to.
CREATE TABLE IF NOT EXISTS sy_history (
    topic      TEXT   NOT NULL,
    epoch      BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (topic, epoch, seq)
);

-- Per topic, the newest sequence removed by retention: a cursor older than
-- this cannot be replayed without a gap.
CREATE TABLE IF NOT EXISTS sy_trimmed (
    topic TEXT   NOT NULL,
    epoch BIGINT NOT NULL,
    upto  BIGINT NOT NULL,
    PRIMARY KEY (topic, epoch)
);

-- Every sequence up to `upto` of `epoch` has been routed and written.
CREATE TABLE IF NOT EXISTS sy_watermark (
    epoch BIGINT NOT NULL PRIMARY KEY,
    upto  BIGINT NOT NULL
);
