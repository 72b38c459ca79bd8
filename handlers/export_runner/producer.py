"""Create an export job: validate, rate-limit, record, enqueue (the API layer and the CLI call this).

Order of effects and what a crash between them leaves:
1. one transaction inserts the job (queued) and its ``data.export_initiated`` audit event,
   after counting the actor's requests of the last hour under an advisory lock on the actor
   (``compliance.lock_export_rate``: two concurrent requests cannot both take the tenth slot).
   The lock serialises only under READ COMMITTED, so a transaction at any other isolation
   level is refused (IsolationLevelError). A crash before the commit leaves nothing.
2. after the commit, ``{"jobId": ...}`` goes to the queue. The message is sent only once the
   job is visible, so the runner's claim always finds it. A crash between the commit and the
   send leaves a queued job with no message: the sweeper fails it once it is older than the
   queue's retention. A send that fails marks the job failed (queued -> failed, conditional)
   with the reason. If the message did arrive after all (an ambiguous timeout), either that
   conditional fail wins and the runner's claim finds the job failed and skips it (the
   caller's "failed" stays true), or the runner's claim won and the fail matches nothing: then
   the job runs and the caller gets it back (running or complete), never a failure.

Cross-tenant exports (tenant ALL_TENANTS):
- who may request one: ``ExportRequest.cross_tenant`` must be True, which the caller sets only
  for a principal it has authorised for cross-tenant compliance exports (the API layer: its
  compliance-administrator permission; the operator CLI: the operator, who holds the database
  login anyway), and the actor must be a ``user``: an agent or a system never exports every
  tenant's audit log. Otherwise CROSS_TENANT_NOT_ALLOWED, and nothing is recorded.
- the audit event goes into the sentinel chain (the job's own tenant) and, in the same
  transaction, into the chain of every tenant with events in the export's scope at request
  time (``compliance.tenants_in_export_scope``, migration 0007), with ``"scope": "ALL_TENANTS"``
  in its payload, so each tenant's own log shows that its events were exported. A tenant whose
  first event in the window is recorded between the request and the run (a window reaching
  into the future) is read but not notified; the job's manifest lists every tenant read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.audit_writer import ACTOR_TYPES, AuditEvent, raise_isolation_error, write_audit_event
from handlers.export_runner.filters import (
    ALL_TENANTS,
    ExportFilter,
    ExportFormat,
    FilterError,
    parse_filter,
    parse_format,
)

RATE_LIMIT = 10
RATE_WINDOW = timedelta(hours=1)
MAX_ACTOR_ID_LENGTH = 256
EXPORT_INITIATED = "data.export_initiated"
AUDIT_SOURCE = "compliance-export"
CROSS_TENANT_ACTOR_TYPE = "user"


class ExportRequestError(Exception):
    """A request refused with a code the API can show (FILTER_TOO_LARGE, RATE_LIMIT_EXCEEDED, ...)."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **({"details": self.details} if self.details else {})}


@dataclass(frozen=True)
class ExportRequest:
    tenant_id: str | uuid.UUID  # a tenant, or ALL_TENANTS (the zero UUID) for a cross-tenant export
    requested_by_actor_id: str
    filter: Mapping[str, Any] | str
    format: str
    actor_type: str = "user"
    # The caller's authorisation of a cross-tenant (ALL_TENANTS) export; see the module docstring.
    cross_tenant: bool = False


@dataclass(frozen=True)
class ValidRequest:
    tenant_id: uuid.UUID
    actor_id: str
    actor_type: str
    filter: ExportFilter
    format: ExportFormat


def validate_request(request: ExportRequest) -> ValidRequest:
    tenant_id = _tenant_id(request.tenant_id)
    actor_id = request.requested_by_actor_id
    if not isinstance(actor_id, str) or not actor_id.strip() or len(actor_id) > MAX_ACTOR_ID_LENGTH:
        raise ExportRequestError(
            "INVALID_ACTOR_ID", f"requested_by_actor_id must be 1-{MAX_ACTOR_ID_LENGTH} characters"
        )
    if "\x00" in actor_id:
        raise ExportRequestError("INVALID_ACTOR_ID", "requested_by_actor_id contains a NUL character")
    if request.actor_type not in ACTOR_TYPES:
        raise ExportRequestError("INVALID_ACTOR_TYPE", f"actor_type must be one of {sorted(ACTOR_TYPES)}")
    if tenant_id == ALL_TENANTS and not (request.cross_tenant and request.actor_type == CROSS_TENANT_ACTOR_TYPE):
        raise ExportRequestError(
            "CROSS_TENANT_NOT_ALLOWED",
            "an ALL_TENANTS export needs a caller authorised for cross-tenant exports (cross_tenant) and a user "
            "actor; agents and systems may not request one",
        )
    try:
        export_format = parse_format(request.format)
        export_filter = parse_filter(request.filter, job_tenant_id=tenant_id)
    except FilterError as exc:
        raise ExportRequestError(exc.code, exc.message, exc.details) from exc
    return ValidRequest(tenant_id, actor_id, request.actor_type, export_filter, export_format)


def _tenant_id(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and value.strip().upper() == "ALL_TENANTS":
        return ALL_TENANTS
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise ExportRequestError(
            "INVALID_TENANT_ID", f"tenant_id must be a UUID or ALL_TENANTS, got {value!r}"
        ) from exc


def _tenants_in_scope(conn: psycopg.Connection[Any], flt: ExportFilter) -> list[uuid.UUID]:
    rows = conn.execute(
        "SELECT t FROM compliance.tenants_in_export_scope(%s, %s, %s, %s, %s) AS t",
        (flt.since, flt.until, flt.tenant_id, flt.actor_type, flt.event_type),
    ).fetchall()
    return sorted(row[0] for row in rows)


def create_export_job(
    conn: psycopg.Connection[Any],
    request: ExportRequest,
    *,
    queue_url: str,
    sqs: Any | None = None,
) -> jobs.ExportJob:
    """Validate, record and enqueue one export; raises ExportRequestError with a code."""
    if not conn.autocommit:
        # The message must leave only after the job is committed; in a caller's transaction
        # it would leave before, and the runner's claim would find no job.
        raise ValueError("create_export_job needs an autocommit connection (it commits before it enqueues)")
    valid = validate_request(request)
    job_id = uuid.uuid4()
    with conn.transaction():
        try:
            current = jobs.lock_and_count_recent_requests(conn, valid.actor_id, RATE_WINDOW)
        except psycopg.errors.InvalidTransactionState as exc:
            raise_isolation_error(exc)
        if current >= RATE_LIMIT:
            raise ExportRequestError(
                "RATE_LIMIT_EXCEEDED",
                f"{current} exports requested in the last hour; the limit is {RATE_LIMIT} per hour per actor",
                {
                    "current": current,
                    "limit": RATE_LIMIT,
                    "window": "1h",
                    "windowSeconds": int(RATE_WINDOW.total_seconds()),
                },
            )
        job = jobs.insert_job(
            conn,
            job_id=job_id,
            tenant_id=valid.tenant_id,
            requested_by_actor_id=valid.actor_id,
            filter=valid.filter.as_json(),
            export_format=valid.format.name,
        )
        payload: dict[str, Any] = {
            "jobId": str(job_id),
            "format": valid.format.name,
            "filter": valid.filter.as_json(),
        }
        audited = [valid.tenant_id]
        if valid.tenant_id == ALL_TENANTS:
            payload["scope"] = "ALL_TENANTS"
            audited.extend(_tenants_in_scope(conn, valid.filter))
        # The sentinel first, then the tenants sorted: every cross-tenant producer takes the
        # chain locks in one order.
        for tenant in audited:
            write_audit_event(
                conn,
                AuditEvent(
                    tenant_id=tenant,
                    actor=valid.actor_id,
                    actor_type=valid.actor_type,
                    source=AUDIT_SOURCE,
                    event_type=EXPORT_INITIATED,
                    payload=payload,
                ),
            )
    try:
        (sqs or client("sqs")).send_message(QueueUrl=queue_url, MessageBody=json.dumps({"jobId": str(job_id)}))
    except (BotoCoreError, ClientError) as exc:
        reason = f"could not enqueue the export: {exc}"
        try:
            failed = jobs.fail_unsent_job(conn, job_id, reason)
        except psycopg.Error:
            reason += " (and the job could not be marked failed; the sweeper will expire it)"
        else:
            if not failed:
                # No longer queued: the send did deliver (an ambiguous timeout) and a runner
                # claimed the job. It runs, so the caller must not hear that it failed.
                return jobs.get_job(conn, job_id) or job
        raise ExportRequestError("QUEUE_SEND_FAILED", reason, {"jobId": str(job_id)}) from exc
    return job
