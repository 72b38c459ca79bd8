-- A hash chain that cannot fork, whatever the writers do.
--
-- The writer's advisory lock serialises the writers of one tenant only under READ COMMITTED:
-- under REPEATABLE READ (a database default, a pooler's setting) the tail is read from a
-- snapshot taken before the lock was granted, and two writers link to the same predecessor.
-- The schema now makes that impossible: a predecessor has at most one successor per tenant,
-- and a tenant has at most one first event (prev_hash NULL; a UNIQUE constraint alone lets
-- NULLs repeat). A racing writer that slipped past the lock gets a unique violation instead of
-- a fork.

DO $$
DECLARE
    forked bigint;
BEGIN
    -- GROUP BY puts NULLs in one group, so this counts repeated heads as well.
    SELECT count(*) INTO forked FROM (
        SELECT 1 FROM compliance.audit_events GROUP BY tenant_id, prev_hash HAVING count(*) > 1
    ) AS forks;
    IF forked > 0 THEN
        RAISE EXCEPTION 'compliance.audit_events already holds % forked link(s) (two events with one predecessor, or two chain heads, in a tenant)', forked
            USING HINT = 'find them with: SELECT tenant_id, prev_hash, count(*) FROM compliance.audit_events GROUP BY 1, 2 HAVING count(*) > 1; the chain must be repaired by its owner before this migration can apply';
    END IF;
END;
$$;

ALTER TABLE compliance.audit_events
    ADD CONSTRAINT audit_events_one_successor UNIQUE (tenant_id, prev_hash);
CREATE UNIQUE INDEX audit_events_one_chain_head ON compliance.audit_events (tenant_id) WHERE prev_hash IS NULL;

-- The chain lock and the rate limit are race-free only under READ COMMITTED (each statement
-- after the lock sees what the previous holder committed). Both refuse any other level.
CREATE FUNCTION compliance.require_read_committed(what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% needs READ COMMITTED isolation, but this transaction runs at %',
            what, upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'start the transaction with BEGIN ISOLATION LEVEL READ COMMITTED (or connect with '
                         'default_transaction_isolation=''read committed''): under a snapshot taken before the '
                         'lock, the lock cannot serialise the writers';
    END IF;
END;
$$;

-- The writer's chain lock: take the tenant's transaction-scoped advisory lock, then return the
-- tail's hash (NULL for an empty chain) and the recorded_at the new event must take (strictly
-- after the tail's). SECURITY DEFINER: a writer that may only INSERT still reads the tail.
CREATE FUNCTION compliance.lock_audit_chain(chain_tenant_id uuid)
RETURNS TABLE (prev_hash char(64), recorded_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tail_hash char(64);
    tail_recorded_at timestamptz;
BEGIN
    PERFORM compliance.require_read_committed('appending to an audit chain');
    PERFORM pg_advisory_xact_lock(hashtextextended('compliance.audit_chain:' || chain_tenant_id::text, 0));
    -- A statement after the lock: in READ COMMITTED its snapshot includes the tail committed by
    -- the writer we waited for.
    SELECT e.event_hash, e.recorded_at INTO tail_hash, tail_recorded_at
    FROM compliance.audit_events AS e
    WHERE e.tenant_id = chain_tenant_id
    ORDER BY e.recorded_at DESC, e.event_id DESC
    LIMIT 1;
    prev_hash := tail_hash;
    recorded_at := greatest(clock_timestamp(), tail_recorded_at + interval '1 microsecond');
    RETURN NEXT;
END;
$$;

-- The producer's rate limit: lock the actor, then count its requests in the window. Two
-- concurrent requests of one actor cannot both take the last slot.
CREATE FUNCTION compliance.lock_export_rate(actor_id text, rate_window interval) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM compliance.require_read_committed('the export rate limit');
    PERFORM pg_advisory_xact_lock(hashtextextended('compliance.export_rate:' || actor_id, 0));
    RETURN (
        SELECT count(*) FROM compliance.export_jobs AS j
        WHERE j.requested_by_actor_id = actor_id AND j.requested_at > now() - rate_window
    );
END;
$$;

REVOKE ALL ON FUNCTION compliance.require_read_committed(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION compliance.lock_audit_chain(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION compliance.lock_export_rate(text, interval) FROM PUBLIC;
