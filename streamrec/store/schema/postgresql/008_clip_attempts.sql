-- How many times a span's build was begun. A build the service did not
-- finish (it stopped or died meanwhile) is begun again, a few times at most:
-- an encode that never gets to its end is not retried for ever.
ALTER TABLE clip_spans ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;

-- Pending jobs by the end of their range: which can be built now, and when
-- the next one can (the clip worker sleeps until then).
CREATE INDEX clip_jobs_waiting ON clip_jobs (status, stop_time);
