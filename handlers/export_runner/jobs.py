"""The export_jobs table: every state change is one guarded statement.

Status moves queued -> running -> complete | failed (and queued -> failed when the job could
not be enqueued or its message expired). Each transition names the status it leaves in its
WHERE clause, so two actors racing on one job (a redelivered message, the sweeper, a second
runner) cannot both win: the loser's UPDATE matches no row.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

JOB_ERROR_LIMIT = 1000


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class ExportJob:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    requested_by_actor_id: str
    filter: dict[str, Any]
    format: str
    status: str
    s3_key: str | None
    presigned_url: str | None
    presigned_url_expires_at: datetime | None
    job_error: str | None
    requested_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            key: (
                value.isoformat()
                if isinstance(value, datetime)
                else str(value)
                if isinstance(value, uuid.UUID)
                else value
            )
            for key, value in asdict(self).items()
        }


_COLUMNS = (
    "job_id, tenant_id, requested_by_actor_id, filter, format, status, s3_key, presigned_url,"
    " presigned_url_expires_at, job_error, requested_at, started_at, completed_at"
)


def truncate_error(error: str) -> str:
    return error if len(error) <= JOB_ERROR_LIMIT else error[: JOB_ERROR_LIMIT - 1] + "…"


def insert_job(
    conn: psycopg.Connection[Any],
    *,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    requested_by_actor_id: str,
    filter: dict[str, Any],
    export_format: str,
) -> ExportJob:
    with conn.cursor(row_factory=class_row(ExportJob)) as cursor:
        cursor.execute(
            f"INSERT INTO compliance.export_jobs (job_id, tenant_id, requested_by_actor_id, filter, format)"
            f" VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (job_id, tenant_id, requested_by_actor_id, Jsonb(filter), export_format),
        )
        job = cursor.fetchone()
    assert job is not None
    return job


def get_job(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> ExportJob | None:
    with conn.cursor(row_factory=class_row(ExportJob)) as cursor:
        cursor.execute(f"SELECT {_COLUMNS} FROM compliance.export_jobs WHERE job_id = %s", (job_id,))
        return cursor.fetchone()


def claim_job(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> bool:
    """The runner's CAS: queued -> running. False when the job is not (or no longer) queued."""
    cursor = conn.execute(
        "UPDATE compliance.export_jobs SET status = 'running', started_at = now()"
        " WHERE job_id = %s AND status = 'queued'",
        (job_id,),
    )
    return cursor.rowcount == 1


def complete_job(
    conn: psycopg.Connection[Any],
    job_id: uuid.UUID,
    *,
    s3_key: str,
    url: str,
    expires_at: datetime,
    manifest: dict[str, Any] | None = None,
) -> bool:
    cursor = conn.execute(
        "UPDATE compliance.export_jobs SET status = 'complete', s3_key = %s, presigned_url = %s,"
        " presigned_url_expires_at = %s, completed_at = now(), job_error = NULL, manifest = %s"
        " WHERE job_id = %s AND status = 'running'",
        (s3_key, url, expires_at, Jsonb(manifest) if manifest is not None else None, job_id),
    )
    return cursor.rowcount == 1


def fail_job(
    conn: psycopg.Connection[Any], job_id: uuid.UUID, error: str, *, from_status: JobStatus = JobStatus.RUNNING
) -> bool:
    cursor = conn.execute(
        "UPDATE compliance.export_jobs SET status = 'failed', job_error = %s, completed_at = now()"
        " WHERE job_id = %s AND status = %s",
        (truncate_error(error), job_id, str(from_status)),
    )
    return cursor.rowcount == 1


def fail_unsent_job(conn: psycopg.Connection[Any], job_id: uuid.UUID, error: str) -> bool:
    """The producer's queued -> failed when the queue send failed (compliance.fail_unsent_export_job:
    the producer's role may change a job only this way)."""
    row = conn.execute("SELECT compliance.fail_unsent_export_job(%s, %s)", (job_id, truncate_error(error))).fetchone()
    return bool(row and row[0])


def set_download_url(conn: psycopg.Connection[Any], job_id: uuid.UUID, *, url: str, expires_at: datetime) -> bool:
    cursor = conn.execute(
        "UPDATE compliance.export_jobs SET presigned_url = %s, presigned_url_expires_at = %s"
        " WHERE job_id = %s AND status = 'complete'",
        (url, expires_at, job_id),
    )
    return cursor.rowcount == 1


def lock_and_count_recent_requests(conn: psycopg.Connection[Any], requested_by_actor_id: str, window: timedelta) -> int:
    """Lock the actor's rate slot for the rest of the transaction and count its recent requests.

    Raises psycopg.errors.InvalidTransactionState outside READ COMMITTED (migration 0003).
    """
    row = conn.execute("SELECT compliance.lock_export_rate(%s, %s)", (requested_by_actor_id, window)).fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class SweptJob:
    job_id: uuid.UUID
    previous_status: str
    job_error: str


def sweep_jobs(
    conn: psycopg.Connection[Any], *, running_longer_than: timedelta, queued_longer_than: timedelta
) -> list[SweptJob]:
    """Fail jobs that can no longer finish on their own.

    - running past the function timeout: the runner was killed (timeout, crash) between its
      claim and its last update; the claim makes every redelivery a no-op, so nothing else
      would ever move the job;
    - queued past the queue's retention: its message is gone (the producer crashed between
      commit and send, or the message expired or went to the DLQ).
    A runner that does finish after being swept finds its job no longer running and discards
    its export (see export_job.py).
    """
    running_error = (
        f"timed out: still running {int(running_longer_than.total_seconds())} s after it started"
        " (the runner was stopped before it could record an outcome)"
    )
    queued_error = (
        f"never started: still queued {int(queued_longer_than.total_seconds())} s after it was requested"
        " (its queue message was lost or expired)"
    )
    rows = conn.execute(
        """
        WITH stuck AS (
            SELECT job_id, status FROM compliance.export_jobs
            WHERE (status = 'running' AND started_at < now() - %(running)s)
               OR (status = 'queued' AND requested_at < now() - %(queued)s)
            FOR UPDATE SKIP LOCKED
        )
        UPDATE compliance.export_jobs AS j
        SET status = 'failed', completed_at = now(),
            job_error = CASE WHEN stuck.status = 'running' THEN %(running_error)s ELSE %(queued_error)s END
        FROM stuck
        WHERE j.job_id = stuck.job_id AND j.status = stuck.status
        RETURNING j.job_id, stuck.status, j.job_error
        """,
        {
            "running": running_longer_than,
            "queued": queued_longer_than,
            "running_error": running_error,
            "queued_error": queued_error,
        },
    ).fetchall()
    return [SweptJob(job_id=row[0], previous_status=row[1], job_error=row[2]) for row in rows]
