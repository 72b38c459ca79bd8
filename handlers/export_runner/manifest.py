"""The manifest of an export: what the file must contain, measured in the database.

Computed in the same snapshot as the file (one REPEATABLE READ, READ ONLY transaction around the
manifest query and the COPY), stored on the job row (``export_jobs.manifest``) and as a sidecar
object ``<key>.manifest.json``. ``verify --manifest`` checks a file against it (verify.py):

- ``rows``: the number of records, and ``sha256`` of the file's bytes;
- per tenant, in chain order (recorded_at, event_id, which is how the writer links events):
  ``head`` (event_id and prev_hash of the tenant's first exported record), ``tail`` (event_id
  and event_hash of its last), ``rows``, and ``gaps``: how many exported records do not link to
  the exported record before them. An export is windowed on occurred_at while chains follow
  recorded_at, so a backdated event (recorded inside the window, occurring before it, or the
  other way round) legitimately cuts a link; the manifest says how many such cuts the scope
  makes, and verify accepts exactly that many (a filtered export's skipped events count the
  same way). Dropping records from the file changes the count and the hash, and dropping the
  first or the last ones changes the head or the tail, each reported on its own.
- ``filter`` (as the job stored it), ``format``, ``jobId``, ``tenantId`` of the job.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from handlers.export_runner.filters import ExportFilter, where_clause

MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"


def manifest_key(object_key: str) -> str:
    return f"{object_key}{MANIFEST_SUFFIX}"


def tenant_summaries(
    conn: psycopg.Connection[Any], job_tenant_id: uuid.UUID, flt: ExportFilter
) -> dict[str, dict[str, Any]]:
    """Per tenant: rows, head, tail and gaps of the records the export selects (see the module)."""
    where, params = where_clause(job_tenant_id, flt)
    query = sql.SQL(
        """
        WITH e AS (
            SELECT tenant_id, event_id, prev_hash, event_hash,
                   lag(event_hash) OVER w AS previous_hash,
                   row_number() OVER w AS n,
                   count(*) OVER (PARTITION BY tenant_id) AS total
            FROM compliance.audit_events WHERE {}
            WINDOW w AS (PARTITION BY tenant_id ORDER BY recorded_at, event_id)
        )
        SELECT tenant_id::text, count(*),
               (array_agg(event_id::text) FILTER (WHERE n = 1))[1],
               (array_agg(prev_hash::text) FILTER (WHERE n = 1))[1],
               (array_agg(event_id::text) FILTER (WHERE n = total))[1],
               (array_agg(event_hash::text) FILTER (WHERE n = total))[1],
               count(*) FILTER (WHERE n > 1 AND prev_hash IS DISTINCT FROM previous_hash)
        FROM e GROUP BY tenant_id ORDER BY tenant_id
        """
    ).format(where)
    summaries: dict[str, dict[str, Any]] = {}
    for tenant, rows, head_id, head_prev, tail_id, tail_hash, gaps in conn.execute(query, params):
        summaries[tenant] = {
            "rows": rows,
            "head": {"event_id": head_id, "prev_hash": head_prev},
            "tail": {"event_id": tail_id, "event_hash": tail_hash},
            "gaps": gaps,
        }
    return summaries


def build_manifest(
    *,
    job_id: uuid.UUID,
    job_tenant_id: uuid.UUID,
    export_format: str,
    job_filter: dict[str, Any],
    rows: int,
    sha256: str,
    tenants: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "jobId": str(job_id),
        "tenantId": str(job_tenant_id),
        "format": export_format,
        "filter": job_filter,
        "rows": rows,
        "sha256": sha256,
        "tenants": tenants,
    }
