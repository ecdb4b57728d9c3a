-- The same tables as schema/sqlite/001_initial.sql, in PostgreSQL's types:
-- BIGSERIAL keys, DOUBLE PRECISION times (POSIX seconds), BIGINT sizes.
-- Flags stay INTEGER 0/1, so the store's SQL is the same on both engines.

-- Streams registered through the API.
CREATE TABLE streams (
    id BIGSERIAL PRIMARY KEY,
    url TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    create_date DOUBLE PRECISION NOT NULL,
    start_date DOUBLE PRECISION,
    stop_date DOUBLE PRECISION,
    wanted INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

-- One row per segmenter process run: segments of one run form one timeline.
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    stream_id BIGINT NOT NULL REFERENCES streams(id),
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    exit_reason TEXT
);

-- Closed, indexed segments; times are POSIX seconds (wall clock).
CREATE TABLE segments (
    id BIGSERIAL PRIMARY KEY,
    stream_id BIGINT NOT NULL REFERENCES streams(id),
    run_id BIGINT NOT NULL REFERENCES runs(id),
    path TEXT NOT NULL UNIQUE,
    start_time DOUBLE PRECISION NOT NULL,
    end_time DOUBLE PRECISION NOT NULL,
    bytes BIGINT NOT NULL
);
CREATE INDEX segments_stream_time ON segments (stream_id, end_time, start_time);

-- Clip requests: the same (stream, start, stop, encoder) is the same job.
CREATE TABLE clip_jobs (
    id BIGSERIAL PRIMARY KEY,
    stream_id BIGINT NOT NULL REFERENCES streams(id),
    start_time DOUBLE PRECISION NOT NULL,
    stop_time DOUBLE PRECISION NOT NULL,
    stop_given INTEGER NOT NULL,
    encoder TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    error_message TEXT,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX clip_jobs_lookup ON clip_jobs (stream_id, start_time, stop_given, encoder);
CREATE INDEX clip_jobs_status ON clip_jobs (status);

-- Finished clips of a job, one per continuous recorded span.
CREATE TABLE clips (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES clip_jobs(id),
    seq INTEGER NOT NULL,
    link TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    start_time DOUBLE PRECISION NOT NULL,
    stop_time DOUBLE PRECISION NOT NULL,
    bytes BIGINT NOT NULL
);
CREATE INDEX clips_job ON clips (job_id, seq);
