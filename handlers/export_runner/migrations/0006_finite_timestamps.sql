-- No timestamp of the product may be 'infinity' or '-infinity': PostgreSQL accepts them in
-- timestamptz, but they have no ISO 8601 form (an export would print "infinity"), sort before
-- or after every real window, and an infinite recorded_at would pin a tenant's chain tail
-- forever. NULL stays allowed where the column allows it (isfinite(NULL) is NULL, which a CHECK
-- accepts).
ALTER TABLE compliance.audit_events
    ADD CONSTRAINT audit_events_finite_times CHECK (isfinite(occurred_at) AND isfinite(recorded_at));
ALTER TABLE compliance.export_jobs
    ADD CONSTRAINT export_jobs_finite_times CHECK (
        isfinite(requested_at) AND isfinite(started_at) AND isfinite(completed_at)
        AND isfinite(presigned_url_expires_at)
    );
