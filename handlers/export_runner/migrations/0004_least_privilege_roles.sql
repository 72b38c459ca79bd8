-- Least-privilege database roles. The migrating login (the cluster's admin) owns the schema and
-- its objects and stays the only role that may ALTER, DROP or TRUNCATE them or disable the
-- append-only triggers: none of these roles owns anything or holds TRUNCATE, TRIGGER,
-- REFERENCES, DELETE or CREATE, and none may grant its rights on.
--
--   audit_writer     INSERT on audit_events and EXECUTE on compliance.lock_audit_chain (which
--                    reads the chain tail for it); nothing else, not even SELECT.
--   export_runner    SELECT on audit_events; SELECT and UPDATE on export_jobs (the runner's
--                    claim and outcome, the sweeper, a re-issued download URL).
--   export_producer  the writer's rights (member of audit_writer); INSERT and SELECT on
--                    export_jobs (SELECT: the inserted row comes back with RETURNING, and the
--                    API layer shows a job's status); EXECUTE on lock_export_rate (the rate
--                    limit counts under its lock) and on fail_unsent_export_job (queued ->
--                    failed when the queue send failed), instead of UPDATE on the table.
--
-- Logins: the roles are LOGIN roles without a password. On RDS/Aurora, where the role rds_iam
-- exists, each is granted rds_iam and logs in with an IAM authentication token only (the
-- functions' execution roles hold rds-db:connect on exactly their user). Where rds_iam does not
-- exist (a plain PostgreSQL: local runs, the tests) no grant is made, and the roles log in by
-- whatever pg_hba.conf allows for them. A password, if an operator wants one there, is theirs to
-- set (ALTER ROLE ... PASSWORD); migrations never store one.
--
-- Roles belong to the whole cluster, not to one database: a second database migrated on the same
-- cluster finds them and only adds its grants.

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['audit_writer', 'export_runner', 'export_producer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format(
                    'CREATE ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS',
                    role_name
                );
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by the migrator of another database on this cluster
            END;
        END IF;
        IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'rds_iam') THEN
            EXECUTE format('GRANT rds_iam TO %I', role_name);
        END IF;
    END LOOP;
END;
$$;

-- Nothing for anyone by default, then exactly the rights above.
REVOKE ALL ON SCHEMA compliance FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA compliance FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA compliance FROM PUBLIC;
-- The append-only trigger function runs as a trigger only (triggers do not check EXECUTE).
REVOKE ALL ON SCHEMA compliance FROM audit_writer, export_runner, export_producer;
REVOKE ALL ON ALL TABLES IN SCHEMA compliance FROM audit_writer, export_runner, export_producer;

GRANT USAGE ON SCHEMA compliance TO audit_writer, export_runner, export_producer;

GRANT INSERT ON compliance.audit_events TO audit_writer;
GRANT EXECUTE ON FUNCTION compliance.lock_audit_chain(uuid) TO audit_writer;

GRANT SELECT ON compliance.audit_events TO export_runner;
GRANT SELECT, UPDATE ON compliance.export_jobs TO export_runner;

GRANT audit_writer TO export_producer;
GRANT INSERT, SELECT ON compliance.export_jobs TO export_producer;
GRANT EXECUTE ON FUNCTION compliance.lock_export_rate(text, interval) TO export_producer;

-- The producer's only change to an existing job: a job whose queue message could not be sent
-- moves from queued to failed, with the reason. True when this call made the change.
CREATE FUNCTION compliance.fail_unsent_export_job(unsent_job_id uuid, reason text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed integer;
BEGIN
    UPDATE compliance.export_jobs
    SET status = 'failed', job_error = left(reason, 1000), completed_at = now()
    WHERE job_id = unsent_job_id AND status = 'queued';
    GET DIAGNOSTICS changed = ROW_COUNT;
    RETURN changed = 1;
END;
$$;
REVOKE ALL ON FUNCTION compliance.fail_unsent_export_job(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION compliance.fail_unsent_export_job(uuid, text) TO export_producer;
