-- The compliance schema: the hash-chained audit log and the export job queue.
CREATE SCHEMA IF NOT EXISTS compliance;

CREATE TABLE compliance.audit_events (
    event_id    uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- Chain order is (recorded_at, event_id); the writer makes recorded_at strictly increasing
    -- per tenant while it holds the tenant's advisory lock.
    recorded_at timestamptz NOT NULL,
    actor       text        NOT NULL CHECK (actor <> ''),
    actor_type  text        NOT NULL CHECK (actor_type IN ('user', 'system', 'agent')),
    source      text        NOT NULL CHECK (source <> ''),
    event_type  text        NOT NULL CHECK (
        event_type ~ '^(auth|user|agent|mcp|workspace|data|policy|approval)(\.[a-z0-9_]+)+$'
    ),
    payload     jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    -- NULL only for the first event of a tenant's chain.
    prev_hash   char(64)    NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    event_hash  char(64)    NOT NULL CHECK (event_hash ~ '^[0-9a-f]{64}$')
);

-- Tenant-scoped exports: WHERE tenant_id = ? AND occurred_at in [since, until) ORDER BY occurred_at, event_id.
CREATE INDEX audit_events_tenant_occurred ON compliance.audit_events (tenant_id, occurred_at, event_id);
-- Cross-tenant (ALL_TENANTS) exports.
CREATE INDEX audit_events_occurred ON compliance.audit_events (occurred_at, event_id);
-- The writer's chain-tail lookup: the latest (recorded_at, event_id) of a tenant.
CREATE INDEX audit_events_tenant_chain ON compliance.audit_events (tenant_id, recorded_at, event_id);

CREATE TABLE compliance.export_jobs (
    job_id                   uuid        PRIMARY KEY,
    tenant_id                uuid        NOT NULL,
    requested_by_actor_id    text        NOT NULL CHECK (length(requested_by_actor_id) BETWEEN 1 AND 256),
    filter                   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    format                   text        NOT NULL CHECK (format IN ('csv', 'json')),
    status                   text        NOT NULL DEFAULT 'queued'
                                         CHECK (status IN ('queued', 'running', 'complete', 'failed')),
    s3_key                   text,
    presigned_url            text,
    presigned_url_expires_at timestamptz,
    job_error                text        CHECK (length(job_error) <= 1000),
    requested_at             timestamptz NOT NULL DEFAULT now(),
    started_at               timestamptz,
    completed_at             timestamptz,
    CONSTRAINT export_jobs_complete_has_object CHECK (
        status <> 'complete'
        OR (s3_key IS NOT NULL AND presigned_url IS NOT NULL AND presigned_url_expires_at IS NOT NULL
            AND completed_at IS NOT NULL)
    )
);

CREATE INDEX export_jobs_tenant_requested ON compliance.export_jobs (tenant_id, requested_at DESC);
CREATE INDEX export_jobs_tenant_actor_requested
    ON compliance.export_jobs (tenant_id, requested_by_actor_id, requested_at DESC);
-- The producer's rate limit counts an actor's requests across tenants (an operator with the
-- ALL_TENANTS sentinel is still one actor).
CREATE INDEX export_jobs_actor_requested ON compliance.export_jobs (requested_by_actor_id, requested_at DESC);
-- The sweeper's scans.
CREATE INDEX export_jobs_running_started ON compliance.export_jobs (started_at) WHERE status = 'running';
CREATE INDEX export_jobs_queued_requested ON compliance.export_jobs (requested_at) WHERE status = 'queued';
