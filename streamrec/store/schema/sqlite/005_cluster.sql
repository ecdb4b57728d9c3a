-- Several nodes on one database. Every time here is the database's clock
-- (db_now(), POSIX seconds), never a node's.
-- (db_now() is a function the SQLite driver registers on its connection.)

-- The nodes that record: each registers, heartbeats, and is gone once it
-- expires. incarnation grows with every start of a node of that name.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    public_url TEXT NOT NULL,
    incarnation BIGINT NOT NULL DEFAULT 1,
    max_streams INTEGER,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

-- A started stream's lease: the node that records it, until when, and the
-- epoch, which grows with each new owner (the fencing token of its runs).
ALTER TABLE streams ADD COLUMN owner TEXT;
ALTER TABLE streams ADD COLUMN lease_expires DOUBLE PRECISION;
ALTER TABLE streams ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
-- The recorder's state as its owner reports it, for every node to answer with.
ALTER TABLE streams ADD COLUMN recorder_state TEXT;

-- Which node recorded a run, under which epoch of its stream's lease.
ALTER TABLE runs ADD COLUMN node TEXT;
ALTER TABLE runs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
