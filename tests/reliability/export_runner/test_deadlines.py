"""Issue #9 item 6: the deadline holds everywhere, and no failure after the claim is left to the sweeper.

Before: the deadline was checked only when a part filled, so a query blocked before its first
part ran past the function timeout; the last check came before CompleteMultipartUpload could not
stop it; a lost connection while loading the job or recording its completion escaped as an
exception (the message redelivered, the job left running for the sweeper); and the producer
reported QUEUE_SEND_FAILED for a job a runner had already claimed.
"""

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.filters import FORMATS, object_key
from handlers.export_runner.producer import ExportRequest, create_export_job
from handlers.export_runner.storage import s3_client
from tests.support.export_fixtures import ExportDatabase, bulk_append, insert_job_row, spaced_events, window_filter

LOGGER = Logger(service="export-deadline-test")


@pytest.fixture
def seeded(export_db: ExportDatabase) -> tuple[uuid.UUID, uuid.UUID]:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 20))
        job_id = insert_job_row(conn, tenant_id=tenant)
    return tenant, job_id


@pytest.fixture
def deps(export_db: ExportDatabase, exports_bucket: str) -> RunnerDependencies:
    return RunnerDependencies(
        database=export_db.database(), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900
    )


def stored(export_db: ExportDatabase, job_id: uuid.UUID) -> jobs.ExportJob:
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None
    return job


def objects(bucket: str) -> list[str]:
    return [item["Key"] for item in s3_client().list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture
def locked_audit_log(export_db: ExportDatabase) -> Iterator[None]:
    """Another session holds an ACCESS EXCLUSIVE lock on audit_events for up to 20 s: the export
    query blocks before it produces a single row."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with export_db.connect(autocommit=False) as conn:
            conn.execute("LOCK TABLE compliance.audit_events IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(20)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(10)
    yield
    release.set()
    thread.join(30)


def test_a_query_that_produces_nothing_is_cancelled_at_the_deadline(
    export_db: ExportDatabase, deps: RunnerDependencies, seeded: Any, locked_audit_log: None
) -> None:
    _, job_id = seeded
    stop_at = time.monotonic() + 1.5
    started = time.monotonic()
    report = run_export_job(job_id, deps, logger=LOGGER, time_left_ms=lambda: int((stop_at - time.monotonic()) * 1000))
    elapsed = time.monotonic() - started
    assert report.outcome is Outcome.FAILED
    assert elapsed < 6, f"the export ran {elapsed:.1f} s past a 1.5 s deadline"
    job = stored(export_db, job_id)
    assert job.status == "failed"
    assert job.job_error is not None and job.job_error.startswith(
        "ExportDeadlineExceeded: export query cancelled at the deadline"
    )
    assert objects(deps.bucket) == []


def test_the_deadline_is_checked_before_the_upload_is_completed(
    export_db: ExportDatabase, deps: RunnerDependencies, seeded: Any
) -> None:
    tenant, job_id = seeded
    # Plenty of time for the checks before the query (and its statement_timeout), none left
    # once every row is read: the object must not appear.
    budget = iter([60_000, 60_000])
    report = run_export_job(job_id, deps, logger=LOGGER, time_left_ms=lambda: next(budget, -1))
    assert report.outcome is Outcome.FAILED
    job = stored(export_db, job_id)
    assert job.status == "failed"
    assert job.job_error == "ExportDeadlineExceeded: export stopped before the function timeout"
    assert object_key(tenant, job_id, FORMATS["csv"]) not in objects(deps.bucket)
    assert objects(deps.bucket) == []


def failing_once(real: Callable[..., Any], *, after_real: bool = False) -> Callable[..., Any]:
    calls = {"n": 0}

    def call(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            if after_real:
                real(*args, **kwargs)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    return call


def test_a_lost_connection_while_loading_the_claimed_job_fails_the_job(
    export_db: ExportDatabase, deps: RunnerDependencies, seeded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, job_id = seeded
    monkeypatch.setattr(jobs, "get_job", failing_once(jobs.get_job))
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert report.outcome is Outcome.FAILED
    job = stored(export_db, job_id)
    assert job.status == "failed"
    assert job.job_error == (
        "could not load the job after claiming it: OperationalError: server closed the connection unexpectedly"
    )


def test_a_lost_connection_while_recording_the_completion_fails_the_job_and_discards_the_export(
    export_db: ExportDatabase, deps: RunnerDependencies, seeded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, job_id = seeded
    monkeypatch.setattr(jobs, "complete_job", failing_once(jobs.complete_job))
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert report.outcome is Outcome.FAILED
    job = stored(export_db, job_id)
    assert job.status == "failed" and job.job_error is not None
    assert job.job_error.startswith("could not record the completed export: OperationalError")
    assert objects(deps.bucket) == []


def test_a_completion_that_committed_before_its_connection_broke_stands(
    export_db: ExportDatabase, deps: RunnerDependencies, seeded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, job_id = seeded
    monkeypatch.setattr(jobs, "complete_job", failing_once(jobs.complete_job, after_real=True))
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert report.outcome is Outcome.COMPLETED
    job = stored(export_db, job_id)
    assert job.status == "complete" and job.s3_key == object_key(tenant, job_id, FORMATS["csv"])
    assert objects(deps.bucket) == [job.s3_key, f"{job.s3_key}.manifest.json"]


class DeliveredThenTimedOut:
    """An SQS client whose send reaches the queue, a runner claims the job, and then the
    response is lost (the caller sees an error, as after a read timeout)."""

    def __init__(self, export_db: ExportDatabase) -> None:
        self._sqs = client("sqs")
        self._db = export_db

    def send_message(self, **kwargs: Any) -> Any:
        self._sqs.send_message(**kwargs)
        with self._db.connect() as conn:
            assert jobs.claim_job(conn, uuid.UUID(json.loads(kwargs["MessageBody"])["jobId"]))
        raise ClientError({"Error": {"Code": "RequestTimeout", "Message": "response lost"}}, "SendMessage")


def test_the_producer_never_reports_a_failure_for_a_job_that_runs(export_db: ExportDatabase, export_queue: str) -> None:
    request = ExportRequest(tenant_id=uuid.uuid4(), requested_by_actor_id="op", filter=window_filter(), format="csv")
    with export_db.connect() as conn:
        job = create_export_job(conn, request, queue_url=export_queue, sqs=DeliveredThenTimedOut(export_db))
    assert job.status == "running"
    assert stored(export_db, job.job_id).status == "running"
