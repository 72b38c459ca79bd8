-- The manifest of a finished export (handlers/export_runner/manifest.py): row count, per tenant
-- the head (first record in chain order and its prev_hash), the tail (last record and its
-- event_hash) and the number of chain links the export's scope leaves out, the filter, and the
-- file's SHA-256. Kept on the job row (the database's copy, which a downloader of the file cannot
-- change) and as a sidecar object next to the export. export_runner's table-wide UPDATE on
-- export_jobs (0004) covers the column.
ALTER TABLE compliance.export_jobs ADD COLUMN manifest jsonb NULL CHECK (jsonb_typeof(manifest) = 'object');
