"""Faults in the middle of an export: whatever breaks, no partial object and a recorded outcome."""

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from handlers.export_runner import jobs
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job, stream_application_name
from handlers.export_runner.filters import FORMATS, object_key
from handlers.export_runner.storage import s3_client
from tests.reliability.export_runner.conftest import BigExport
from tests.support.export_fixtures import LambdaContext, cold_start, insert_job_row

LOGGER = Logger(service="export-runner-test")


@pytest.fixture
def deps(big_export: BigExport, exports_bucket: str) -> RunnerDependencies:
    return RunnerDependencies(
        database=big_export.db.database(), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900
    )


@pytest.fixture
def job_id(big_export: BigExport) -> uuid.UUID:
    with big_export.db.connect() as conn:
        return insert_job_row(conn, tenant_id=big_export.tenant_id)


def key_of(big_export: BigExport, job_id: uuid.UUID) -> str:
    return object_key(big_export.tenant_id, job_id, FORMATS["csv"])


class AfterFirstPart:
    """Runs ``action(upload_id)`` in another thread once S3 holds a first part of ``key``."""

    def __init__(self, bucket: str, key: str, action: Callable[[str], Any]) -> None:
        self.results: list[Any] = []
        self._thread = threading.Thread(target=self._watch, args=(bucket, key, action), daemon=True)
        self._thread.start()

    def _watch(self, bucket: str, key: str, action: Callable[[str], Any]) -> None:
        s3 = s3_client()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
                if s3.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"]).get("Parts"):
                    self.results.append(action(upload["UploadId"]))
                    return
            time.sleep(0.005)
        self.results.append(TimeoutError("no part was uploaded"))

    def join(self) -> list[Any]:
        self._thread.join(timeout=60)
        return self.results


def assert_nothing_left_in(bucket: str, key: str) -> None:
    s3 = s3_client()
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key=key)
    assert caught.value.response["Error"]["Code"] == "404"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def job(big_export: BigExport, job_id: uuid.UUID) -> jobs.ExportJob:
    with big_export.db.connect() as conn:
        found = jobs.get_job(conn, job_id)
    assert found is not None
    return found


def terminate_stream(admin_url: str, job_id: uuid.UUID) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
            (stream_application_name(job_id),),
        ).fetchall()
    return rows == [(True,)]


def test_s3_failing_mid_upload_leaves_no_object_and_fails_the_job(
    big_export: BigExport, deps: RunnerDependencies, job_id: uuid.UUID
) -> None:
    key = key_of(big_export, job_id)
    # The upload disappears under the runner, as when a lifecycle rule or an operator aborts it:
    # S3 itself refuses the next part.
    aborter = AfterFirstPart(
        deps.bucket,
        key,
        lambda upload_id: s3_client().abort_multipart_upload(Bucket=deps.bucket, Key=key, UploadId=upload_id),
    )
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert len(aborter.join()) == 1

    assert report.outcome is Outcome.FAILED
    failed = job(big_export, job_id)
    assert failed.status == "failed" and failed.completed_at is not None and failed.presigned_url is None
    assert "UploadPart" in (failed.job_error or "")  # moto answers 500 where S3 says NoSuchUpload
    assert_nothing_left_in(deps.bucket, key)


def test_losing_the_database_mid_stream_fails_the_job_and_aborts_the_upload(
    big_export: BigExport, deps: RunnerDependencies, job_id: uuid.UUID
) -> None:
    key = key_of(big_export, job_id)
    killer = AfterFirstPart(deps.bucket, key, lambda _: terminate_stream(big_export.db.cluster.url, job_id))
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert killer.join() == [True]  # the COPY was still running when its backend was killed

    assert report.outcome is Outcome.FAILED
    failed = job(big_export, job_id)
    assert failed.status == "failed"
    # libpq reports the administrator's FATAL message or just the closed socket, depending on
    # whether the notice arrived before the connection dropped.
    assert (failed.job_error or "").startswith(("AdminShutdown: terminating connection", "OperationalError: "))
    assert "\n" not in (failed.job_error or "")
    assert len(failed.job_error or "") <= 1000
    assert_nothing_left_in(deps.bucket, key)


@pytest.fixture
def connections_blocked(big_export: BigExport) -> Iterator[Callable[[], None]]:
    admin_url = big_export.db.cluster.url

    def block() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{big_export.db.name}" ALLOW_CONNECTIONS false')

    yield block
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{big_export.db.name}" ALLOW_CONNECTIONS true')


def test_a_failure_that_cannot_be_recorded_is_acknowledged_and_swept_later(
    big_export: BigExport, deps: RunnerDependencies, job_id: uuid.UUID, connections_blocked: Callable[[], None]
) -> None:
    key = key_of(big_export, job_id)

    def database_outage(_: str) -> bool:
        connections_blocked()  # no new connection can record the failure...
        return terminate_stream(big_export.db.cluster.url, job_id)  # ...and the stream dies

    outage = AfterFirstPart(deps.bucket, key, database_outage)
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert outage.join() == [True]
    assert report.outcome is Outcome.FAILED  # acknowledged: a redelivery would be skipped anyway
    assert_nothing_left_in(deps.bucket, key)

    with psycopg.connect(big_export.db.cluster.url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{big_export.db.name}" ALLOW_CONNECTIONS true')
    assert job(big_export, job_id).status == "running"
    with big_export.db.connect() as conn:
        swept = jobs.sweep_jobs(conn, running_longer_than=timedelta(0), queued_longer_than=timedelta(days=365))
    assert job_id in {s.job_id for s in swept}
    assert job(big_export, job_id).job_error.startswith("timed out")  # type: ignore[union-attr]


def test_an_export_that_finishes_after_being_swept_is_discarded(
    big_export: BigExport, deps: RunnerDependencies, job_id: uuid.UUID
) -> None:
    key = key_of(big_export, job_id)

    def sweep_now(_: str) -> list[Any]:
        with big_export.db.connect() as conn:
            return jobs.sweep_jobs(conn, running_longer_than=timedelta(0), queued_longer_than=timedelta(days=365))

    sweeper = AfterFirstPart(deps.bucket, key, sweep_now)
    report = run_export_job(job_id, deps, logger=LOGGER)
    assert job_id in {s.job_id for s in sweeper.join()[0]}

    assert report.outcome is Outcome.FAILED and report.result is not None
    assert report.result.rows == 12_000  # the export itself went through...
    swept = job(big_export, job_id)
    assert swept.status == "failed" and swept.job_error.startswith("timed out")  # type: ignore[union-attr]
    assert_nothing_left_in(deps.bucket, key)  # ...but a failed job keeps no download


def test_the_runner_stops_before_the_function_timeout(
    big_export: BigExport, exports_bucket: str, job_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", big_export.db.url)
    monkeypatch.setenv("COMPLIANCE_EXPORTS_BUCKET", exports_bucket)
    runner = cold_start("handlers.export_runner.runner")
    context = LambdaContext(timeout_seconds=29)  # inside the runner's 30 s safety margin

    response = runner.handler({"Records": [_record(job_id)]}, context)

    assert response == {"batchItemFailures": []}
    stopped = job(big_export, job_id)
    assert stopped.status == "failed"
    assert stopped.job_error == "ExportDeadlineExceeded: export stopped before the function timeout"
    assert_nothing_left_in(exports_bucket, key_of(big_export, job_id))


def _record(job_id: uuid.UUID) -> dict[str, Any]:
    from tests.support.export_fixtures import sqs_record

    return sqs_record(f'{{"jobId": "{job_id}"}}')
