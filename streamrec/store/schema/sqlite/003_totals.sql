-- What each stream has recorded, kept up to date in the same transaction as
-- every segment insert, delete and shift, so status and lists cost the same
-- with a day or a year of archive.
CREATE TABLE stream_totals (
    stream_id BIGINT PRIMARY KEY REFERENCES streams(id),
    segments BIGINT NOT NULL DEFAULT 0,
    seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    first_start DOUBLE PRECISION,
    last_end DOUBLE PRECISION
);
INSERT INTO stream_totals (stream_id, segments, seconds, bytes, first_start, last_end)
    SELECT streams.id, COUNT(segments.id), COALESCE(SUM(segments.end_time - segments.start_time), 0),
           COALESCE(SUM(segments.bytes), 0), MIN(segments.start_time), MAX(segments.end_time)
    FROM streams LEFT JOIN segments ON segments.stream_id = streams.id
    GROUP BY streams.id;
