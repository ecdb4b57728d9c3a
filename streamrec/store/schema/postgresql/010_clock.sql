-- Time provenance. Each stream's clock option (auto, camera, arrival); the
-- clock each run followed and a bound on how far its times may be off
-- (seconds), kept up to date by the recorder; and both for each clip, with
-- the instants of its first and last shown frames.
ALTER TABLE streams ADD COLUMN clock TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE runs ADD COLUMN clock TEXT;
ALTER TABLE runs ADD COLUMN time_error DOUBLE PRECISION;
ALTER TABLE clips ADD COLUMN clock TEXT;
ALTER TABLE clips ADD COLUMN first_frame DOUBLE PRECISION;
ALTER TABLE clips ADD COLUMN last_frame DOUBLE PRECISION;
ALTER TABLE clips ADD COLUMN time_error DOUBLE PRECISION;
