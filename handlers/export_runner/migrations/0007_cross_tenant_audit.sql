-- Cross-tenant (ALL_TENANTS) exports are audited in the chain of every tenant they read
-- (handlers/export_runner/producer.py). The producer learns which tenants those are through this
-- function only: it returns the distinct tenant ids with events in the export's scope (window and
-- the optional tenant, actor type and event type filters), nothing of the events themselves,
-- so export_producer still holds no SELECT on audit_events. SECURITY DEFINER runs it as the owner
-- (the migrating login); search_path is pinned so no caller-created object can stand in for
-- pg_catalog's.
CREATE FUNCTION compliance.tenants_in_export_scope(
    p_since timestamptz, p_until timestamptz, p_tenant_id uuid, p_actor_type text, p_event_type text
) RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT tenant_id FROM compliance.audit_events
    WHERE occurred_at >= p_since AND occurred_at < p_until
      AND tenant_id <> '00000000-0000-0000-0000-000000000000'
      AND (p_tenant_id IS NULL OR tenant_id = p_tenant_id)
      AND (p_actor_type IS NULL OR actor_type = p_actor_type)
      AND (p_event_type IS NULL OR event_type = p_event_type)
    ORDER BY tenant_id
$$;
REVOKE ALL ON FUNCTION compliance.tenants_in_export_scope(timestamptz, timestamptz, uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION compliance.tenants_in_export_scope(timestamptz, timestamptz, uuid, text, text)
    TO export_producer;
