-- The audit log is append-only: a changed or removed row would silently break (or hide a break
-- in) the hash chain, so the database itself refuses UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION compliance.reject_audit_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'compliance.audit_events is append-only: % rejected', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit events are immutable; record a new event instead';
END;
$$;

CREATE TRIGGER audit_events_reject_update_delete
    BEFORE UPDATE OR DELETE ON compliance.audit_events
    FOR EACH ROW EXECUTE FUNCTION compliance.reject_audit_event_change();

CREATE TRIGGER audit_events_reject_truncate
    BEFORE TRUNCATE ON compliance.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION compliance.reject_audit_event_change();
