"""Run one export job: claim, load, stream to S3, presign, record the outcome.

Retry and idempotency windows (the queue delivers at least once, up to 3 times):
- before the claim commits (database unreachable, crash): the error propagates, the message
  is reported as a batch item failure and redelivered; nothing happened yet.
- claim: ``UPDATE ... SET status='running' WHERE status='queued'``. Exactly one delivery wins;
  every other one (a duplicate, a redelivery, a second runner) matches no row, logs
  skip-not-queued and is acknowledged.
- after the claim, every failure is recorded on the job (failed, job_error) and acknowledged:
  a redelivery could not run the job again anyway. That includes loading the job right after
  the claim and recording its completion (a lost connection there used to leave the job
  running for the sweeper). If even recording fails, it is logged and acknowledged; the job
  stays running and the sweeper fails it after the function timeout.
- the deadline (``time_left_ms``: what remains before the runner must stop) holds everywhere:
  it is checked before the export query starts, bounds the query itself (``statement_timeout``,
  so a query that blocks or produces no part yet is cancelled by Postgres), is checked at each
  part and once more before CompleteMultipartUpload; past it the upload is aborted and the job
  failed while there is still time to record it.
- recording the completion fails (the connection is lost): the job is failed (``WHERE
  status='running'``) and the object deleted; if that finds the job no longer running, the
  completion did commit before the connection broke, and the export stands.
- killed between the claim and the final update (timeout, crash): the job stays running until
  the sweeper fails it; an unfinished multipart upload is never visible and the bucket's
  lifecycle rule removes it; an upload that did complete is an orphan object the 7-day
  expiry removes. A job is never complete without its object.
- the final update is ``WHERE status='running'``: if the sweeper got there first, the export
  is discarded (object deleted) and the job stays failed.
Each phase uses its own short-lived connection, so losing the streaming connection does not
prevent recording the failure.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aws_lambda_powertools import Logger

from handlers.export_runner import jobs
from handlers.export_runner.db import Database
from handlers.export_runner.exporter import ExportDeadlineExceeded, ExportResult, stream_copy_to_s3
from handlers.export_runner.filters import (
    FilterError,
    export_copy_statement,
    object_key,
    parse_filter,
    parse_format,
)
from handlers.export_runner.manifest import build_manifest, manifest_key, tenant_summaries

STATE_APPLICATION = "export-runner"
STREAM_APPLICATION_PREFIX = "export-runner-stream:"


class MalformedMessageError(ValueError):
    """A queue message that is not ``{"jobId": "<uuid>"}``: a failure of that message (-> DLQ)."""


def parse_job_message(body: str | None) -> uuid.UUID:
    try:
        message = json.loads(body or "")
    except ValueError as exc:
        raise MalformedMessageError(f"body is not JSON: {exc}") from exc
    if not isinstance(message, dict) or "jobId" not in message:
        raise MalformedMessageError("body has no jobId")
    job_id = message["jobId"]
    try:
        if not isinstance(job_id, str):
            raise ValueError("not a string")
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise MalformedMessageError(f"jobId is not a UUID: {job_id!r}") from exc


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED_NOT_QUEUED = "skipped-not-queued"
    JOB_VANISHED = "job-vanished"


@dataclass(frozen=True)
class RunnerDependencies:
    database: Database
    s3: Any
    bucket: str
    presign_ttl_seconds: int


@dataclass(frozen=True)
class RunReport:
    job_id: uuid.UUID
    outcome: Outcome
    s3_key: str | None = None
    result: ExportResult | None = None
    error: str | None = None


class JobVanishedError(RuntimeError):
    pass


def stream_application_name(job_id: uuid.UUID) -> str:
    return f"{STREAM_APPLICATION_PREFIX}{job_id}"


def presign_download(s3: Any, bucket: str, key: str, ttl_seconds: int) -> tuple[str, datetime]:
    # The expiry is taken before signing: the URL's own clock starts at signing, so the stored
    # expiry is never later than the real one.
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_seconds)
    return url, expires_at


def run_export_job(
    job_id: uuid.UUID,
    deps: RunnerDependencies,
    *,
    logger: Logger,
    time_left_ms: Callable[[], int] | None = None,
) -> RunReport:
    """Run one job. ``time_left_ms``: milliseconds left before the runner must stop (None: no limit)."""
    deadline = (lambda: time_left_ms() <= 0) if time_left_ms is not None else None
    claimed = False
    try:
        with deps.database.connect(application_name=STATE_APPLICATION) as conn:
            if not jobs.claim_job(conn, job_id):
                job = jobs.get_job(conn, job_id)
                logger.info(
                    "skip-not-queued: job is not queued, acknowledging",
                    job_id=str(job_id),
                    status=job.status if job else "missing",
                )
                return RunReport(job_id, Outcome.SKIPPED_NOT_QUEUED)
            claimed = True
            job = jobs.get_job(conn, job_id)
    except Exception as exc:
        if not claimed:
            raise  # nothing happened yet: reported, redelivered
        error = f"could not load the job after claiming it: {_describe(exc)}"
        logger.exception(error, job_id=str(job_id))
        _record_failure(job_id, error, deps, logger)
        return RunReport(job_id, Outcome.FAILED, error=error)

    key: str | None = None
    # Objects this run wrote (key -> version id in a versioned bucket): a discarded export
    # deletes exactly these versions, so no noncurrent copy of it lingers.
    written: dict[str, str | None] = {}
    try:
        if job is None:
            raise JobVanishedError("job row disappeared")
        export_format = parse_format(job.format)
        export_filter = parse_filter(job.filter, job_tenant_id=job.tenant_id)
        key = object_key(job.tenant_id, job.job_id, export_format)
        statement, params = export_copy_statement(job.tenant_id, export_filter, export_format)
        if deadline is not None and deadline():
            raise ExportDeadlineExceeded("export stopped before the function timeout")
        with deps.database.connect(application_name=stream_application_name(job_id)) as stream_conn:
            if time_left_ms is not None:
                # Postgres cancels the query itself at the deadline, also while it has produced
                # nothing yet (a lock wait, a slow scan) and the part-by-part check cannot run.
                stream_conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{time_left_ms()}ms",))
            try:
                # The manifest and the file come from one snapshot: rows committed meanwhile are
                # in neither. Read only, so no writer's chain lock is affected.
                stream_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                tenants = tenant_summaries(stream_conn, job.tenant_id, export_filter)
                result = stream_copy_to_s3(
                    stream_conn,
                    statement,
                    params,
                    s3=deps.s3,
                    bucket=deps.bucket,
                    key=key,
                    content_type=export_format.content_type,
                    deadline=deadline,
                )
                written[key] = result.version_id
                stream_conn.execute("COMMIT")
            except psycopg.errors.QueryCanceled as exc:
                raise ExportDeadlineExceeded(
                    f"export query cancelled at the deadline before the function timeout ({exc.diag.message_primary})"
                ) from exc
        manifest = build_manifest(
            job_id=job.job_id,
            job_tenant_id=job.tenant_id,
            export_format=export_format.name,
            job_filter=job.filter,
            rows=result.rows,
            sha256=result.sha256,
            tenants=tenants,
        )
        if sum(summary["rows"] for summary in tenants.values()) != result.rows:
            raise RuntimeError(f"export wrote {result.rows} rows but its manifest counts a different number")
        written[manifest_key(key)] = deps.s3.put_object(
            Bucket=deps.bucket,
            Key=manifest_key(key),
            Body=json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8"),
            ContentType="application/json",
        ).get("VersionId")
        url, expires_at = presign_download(deps.s3, deps.bucket, key, deps.presign_ttl_seconds)
    except JobVanishedError as exc:
        _record_failure(job_id, str(exc), deps, logger)
        return RunReport(job_id, Outcome.JOB_VANISHED, error=str(exc))
    except Exception as exc:
        error = _describe(exc)
        logger.exception("export failed", job_id=str(job_id), s3_key=key)
        # The file may be complete in S3 but the job will say failed: no unexplained download.
        _delete_quietly(deps, written, logger)
        _record_failure(job_id, error, deps, logger)
        return RunReport(job_id, Outcome.FAILED, s3_key=key, error=error)

    try:
        with deps.database.connect(application_name=STATE_APPLICATION) as conn:
            completed = jobs.complete_job(conn, job_id, s3_key=key, url=url, expires_at=expires_at, manifest=manifest)
    except Exception as exc:
        return _completion_unrecorded(job_id, key, result, written, exc, deps, logger)
    if not completed:
        # Swept (or deleted) while we worked: the job already says failed, so the object must
        # not outlive it as an unexplained download.
        error = "job was no longer running when its export finished; export discarded"
        logger.error(error, job_id=str(job_id), s3_key=key)
        _delete_quietly(deps, written, logger)
        return RunReport(job_id, Outcome.FAILED, s3_key=key, result=result, error=error)
    logger.info(
        "export complete",
        job_id=str(job_id),
        s3_key=key,
        rows=result.rows,
        bytes=result.bytes,
        parts=result.parts,
        stream_seconds=round(result.stream_seconds, 3),
        finalize_seconds=round(result.finalize_seconds, 3),
    )
    return RunReport(job_id, Outcome.COMPLETED, s3_key=key, result=result)


def _completion_unrecorded(
    job_id: uuid.UUID,
    key: str,
    result: ExportResult,
    written: dict[str, str | None],
    exc: Exception,
    deps: RunnerDependencies,
    logger: Logger,
) -> RunReport:
    """The completing UPDATE raised: fail the job if it is still running, else the completion stood."""
    error = f"could not record the completed export: {_describe(exc)}"
    logger.exception(error, job_id=str(job_id), s3_key=key)
    if _record_failure(job_id, error, deps, logger):
        _delete_quietly(deps, written, logger)
        return RunReport(job_id, Outcome.FAILED, s3_key=key, result=result, error=error)
    try:
        with deps.database.connect(application_name=STATE_APPLICATION) as conn:
            job = jobs.get_job(conn, job_id)
    except Exception:
        logger.exception("could not read the job back after an unrecorded completion", job_id=str(job_id))
        job = None
    if job is not None and job.status == jobs.JobStatus.COMPLETE and job.s3_key == key:
        logger.warning("the completion committed before its connection broke", job_id=str(job_id), s3_key=key)
        return RunReport(job_id, Outcome.COMPLETED, s3_key=key, result=result)
    return RunReport(job_id, Outcome.FAILED, s3_key=key, result=result, error=error)


def _describe(exc: Exception) -> str:
    if isinstance(exc, FilterError):
        return f"invalid job: {exc}"
    # One line: libpq messages span several lines, and job_error is shown in UIs and the CLI.
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _record_failure(job_id: uuid.UUID, error: str, deps: RunnerDependencies, logger: Logger) -> bool:
    """Mark the running job failed; True when this call did (False: not running, or unrecordable)."""
    try:
        with deps.database.connect(application_name=STATE_APPLICATION) as conn:
            recorded = jobs.fail_job(conn, job_id, error)
    except Exception:
        logger.exception(
            "could not record the job failure; acknowledging, the sweeper will fail the job", job_id=str(job_id)
        )
        return False
    if recorded:
        logger.warning("job failed", job_id=str(job_id), job_error=jobs.truncate_error(error))
    else:
        logger.error(
            "job not marked failed: its row is gone or no longer running; nothing to record",
            job_id=str(job_id),
            job_error=error,
        )
    return recorded


def _delete_quietly(deps: RunnerDependencies, written: dict[str, str | None], logger: Logger) -> None:
    """Delete what this run wrote. In a versioned bucket (the construct's) a plain delete would
    only add a delete marker and keep the export as a noncurrent version: the version itself is
    deleted instead."""
    for key, version_id in written.items():
        try:
            if version_id is not None:
                deps.s3.delete_object(Bucket=deps.bucket, Key=key, VersionId=version_id)
            else:
                deps.s3.delete_object(Bucket=deps.bucket, Key=key)
        except Exception:
            logger.exception("could not delete the discarded export", s3_key=key, version_id=version_id)
