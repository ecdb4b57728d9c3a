-- Each stream's recorded spans: its segments merged, whichever run recorded
-- them, where the gap from one to the next is at most 0.25 s
-- (streamrec.store.spans.SPAN_JOIN). Kept up to date in the same transaction
-- as every segment insert, delete and shift, so a timeline reads as many
-- rows as it shows spans, with a day or a year of archive.
CREATE TABLE recorded_spans (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id BIGINT NOT NULL REFERENCES streams(id),
    start_time DOUBLE PRECISION NOT NULL,
    end_time DOUBLE PRECISION NOT NULL
);
CREATE INDEX recorded_spans_time ON recorded_spans (stream_id, end_time, start_time);

-- The spans of the archive recorded so far: a segment opens a new span when
-- it starts more than 0.25 s after every segment before it has ended.
INSERT INTO recorded_spans (stream_id, start_time, end_time)
    SELECT stream_id, MIN(start_time), MAX(end_time) FROM (
        SELECT stream_id, start_time, end_time,
               SUM(CASE WHEN start_time - 0.25 <= reached THEN 0 ELSE 1 END) OVER (
                   PARTITION BY stream_id ORDER BY start_time, id ROWS UNBOUNDED PRECEDING
               ) AS span
        FROM (
            SELECT id, stream_id, start_time, end_time,
                   MAX(end_time) OVER (
                       PARTITION BY stream_id ORDER BY start_time, id
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                   ) AS reached
            FROM segments
        ) AS ordered
    ) AS numbered
    GROUP BY stream_id, span;
