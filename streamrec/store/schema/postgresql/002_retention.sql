-- Per-stream retention: segments older than max_age seconds are deleted (NULL: the global rule).
ALTER TABLE streams ADD COLUMN max_age DOUBLE PRECISION;
CREATE INDEX segments_end ON segments (end_time);
CREATE INDEX segments_run ON segments (run_id);
