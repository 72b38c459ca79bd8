"""Issue #9 item 7: bad data the schema and the runner refuse or clean up.

- no timestamp may be +/-infinity (CHECK isfinite), in audit_events or export_jobs;
- a discarded export (the job was failed while it ran) leaves no version of its file or its
  manifest in a versioned bucket (a plain delete would only add a delete marker).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from aws_lambda_powertools import Logger

from handlers.common.aws import client
from handlers.export_runner import export_job, jobs
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.storage import s3_client
from tests.support.export_fixtures import (
    ExportDatabase,
    bulk_append,
    insert_job_row,
    spaced_events,
    window_filter,
)

LOGGER = Logger(service="export-bad-data-test")


@pytest.mark.parametrize("column", ["occurred_at", "recorded_at"])
@pytest.mark.parametrize("value", ["infinity", "-infinity"])
def test_audit_events_refuse_infinite_timestamps(export_db: ExportDatabase, column: str, value: str) -> None:
    times = {"occurred_at": "2026-01-01T00:00:00Z", "recorded_at": "2026-01-01T00:00:01Z", column: value}
    with export_db.connect() as conn, pytest.raises(psycopg.errors.CheckViolation, match="audit_events_finite_times"):
        conn.execute(
            "INSERT INTO compliance.audit_events (event_id, tenant_id, occurred_at, recorded_at, actor, actor_type,"
            " source, event_type, payload, prev_hash, event_hash)"
            " VALUES (%s, %s, %s, %s, 'u', 'user', 'api', 'data.record_viewed', '{}', NULL, %s)",
            (uuid.uuid4(), uuid.uuid4(), times["occurred_at"], times["recorded_at"], "0" * 64),
        )


@pytest.mark.parametrize("column", ["requested_at", "started_at", "completed_at", "presigned_url_expires_at"])
def test_export_jobs_refuse_infinite_timestamps(export_db: ExportDatabase, column: str) -> None:
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4(), filter=window_filter())
        with pytest.raises(psycopg.errors.CheckViolation, match="export_jobs_finite_times"):
            conn.execute(f"UPDATE compliance.export_jobs SET {column} = 'infinity' WHERE job_id = %s", (job_id,))


def test_a_discarded_export_leaves_no_version_behind(
    export_db: ExportDatabase, exports_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = client("s3")
    s3.put_bucket_versioning(Bucket=exports_bucket, VersioningConfiguration={"Status": "Enabled"})
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 5))
        job_id = insert_job_row(conn, tenant_id=tenant, filter=window_filter())
    complete = jobs.complete_job

    def swept_meanwhile(conn: psycopg.Connection[Any], job: uuid.UUID, **kwargs: Any) -> bool:
        jobs.fail_job(conn, job, "swept")  # the sweeper got there first
        return complete(conn, job, **kwargs)

    monkeypatch.setattr(export_job.jobs, "complete_job", swept_meanwhile)
    deps = RunnerDependencies(
        database=export_db.database(), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=60
    )
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert report.outcome is Outcome.FAILED and "discarded" in (report.error or "")
    listing = s3.list_object_versions(Bucket=exports_bucket)
    assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == []
