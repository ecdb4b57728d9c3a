-- Clips from any node: a planned job is cut into spans, one per continuous
-- recorded span of its range, each built by a node that can read its
-- segments (the node that recorded them, or any node sharing its data dir).
CREATE TABLE clip_spans (
    job_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    node TEXT,
    start_time DOUBLE PRECISION NOT NULL,
    stop_time DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    builder TEXT,
    PRIMARY KEY (job_id, seq)
);

-- When the job was cut into spans (NULL: not yet), and the nodes it waits for.
ALTER TABLE clip_jobs ADD COLUMN planned_at DOUBLE PRECISION;
ALTER TABLE clip_jobs ADD COLUMN waiting_for TEXT;
