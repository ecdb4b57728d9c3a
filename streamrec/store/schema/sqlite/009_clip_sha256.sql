-- The SHA-256 of each clip's bytes (hex), taken by the clip worker from the
-- file it built before handing it to the storage backend; and the link of
-- the clip's signed manifest (--signing-key), NULL when it is not signed.
-- Both are NULL for clips built before this version.
ALTER TABLE clips ADD COLUMN sha256 TEXT;
ALTER TABLE clips ADD COLUMN manifest TEXT;
