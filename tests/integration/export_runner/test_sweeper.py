import uuid
from typing import Any

import pytest

from handlers.export_runner import jobs
from tests.support.export_fixtures import ExportDatabase, LambdaContext, cold_start, insert_job_row


@pytest.fixture
def sweeper(monkeypatch: pytest.MonkeyPatch, export_db: ExportDatabase) -> Any:
    monkeypatch.setenv("DATABASE_URL", export_db.url)
    monkeypatch.delenv("DATABASE_SECRET_ARN", raising=False)
    monkeypatch.delenv("EXPORT_STUCK_AFTER_SECONDS", raising=False)
    monkeypatch.delenv("EXPORT_QUEUED_EXPIRY_SECONDS", raising=False)
    return cold_start("handlers.export_runner.sweeper")


def backdate(export_db: ExportDatabase, job_id: uuid.UUID, *, status: str, column: str, interval: str) -> None:
    """Move a job's clock back, as if it had been waiting that long."""
    with export_db.connect() as conn:
        conn.execute(
            f"UPDATE compliance.export_jobs SET status = %s, {column} = now() - %s::interval WHERE job_id = %s",
            (status, interval, job_id),
        )


def test_stuck_and_abandoned_jobs_are_failed_and_nothing_else(sweeper: Any, export_db: ExportDatabase) -> None:
    with export_db.connect() as conn:
        ids = {
            name: insert_job_row(conn, tenant_id=uuid.uuid4()) for name in ("stuck", "busy", "lost", "fresh", "done")
        }
    backdate(export_db, ids["stuck"], status="running", column="started_at", interval="17 minutes")
    backdate(export_db, ids["busy"], status="running", column="started_at", interval="14 minutes")
    backdate(export_db, ids["lost"], status="queued", column="requested_at", interval="26 hours")
    with export_db.connect() as conn:
        conn.execute(
            "UPDATE compliance.export_jobs SET status = 'complete', started_at = now() - interval '2 days',"
            " completed_at = now(), s3_key = 'k', presigned_url = 'u', presigned_url_expires_at = now()"
            " WHERE job_id = %s",
            (ids["done"],),
        )

    response = sweeper.handler({"source": "aws.events"}, LambdaContext(function_name="export-sweeper"))

    assert sorted(response["swept"], key=lambda item: item["previousStatus"]) == [
        {"jobId": str(ids["lost"]), "previousStatus": "queued"},
        {"jobId": str(ids["stuck"]), "previousStatus": "running"},
    ]
    with export_db.connect() as conn:
        status = {name: jobs.get_job(conn, job_id) for name, job_id in ids.items()}
    assert {name: job.status for name, job in status.items()} == {  # type: ignore[union-attr]
        "stuck": "failed",
        "busy": "running",
        "lost": "failed",
        "fresh": "queued",
        "done": "complete",
    }
    assert status["stuck"].job_error.startswith("timed out: still running 960 s")  # type: ignore[union-attr]
    assert status["lost"].job_error.startswith("never started: still queued 90000 s")  # type: ignore[union-attr]
    assert sweeper.handler({}, LambdaContext())["swept"] == []


def test_thresholds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, export_db: ExportDatabase) -> None:
    monkeypatch.setenv("DATABASE_URL", export_db.url)
    monkeypatch.setenv("EXPORT_STUCK_AFTER_SECONDS", "60")
    sweeper = cold_start("handlers.export_runner.sweeper")
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4())
    backdate(export_db, job_id, status="running", column="started_at", interval="2 minutes")
    assert sweeper.handler({}, LambdaContext())["swept"] == [{"jobId": str(job_id), "previousStatus": "running"}]
