"""The SQS handler end to end: producer -> moto queue -> handler -> S3 -> presigned GET."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from handlers.common.aws import client
from handlers.common.config import ConfigurationError
from handlers.export_runner import jobs
from handlers.export_runner.producer import ExportRequest, create_export_job
from tests.support.export_fixtures import (
    WINDOW_START,
    ExportDatabase,
    LambdaContext,
    bulk_append,
    cold_start,
    download,
    expected_export_rows,
    insert_job_row,
    parse_csv_export,
    parse_ndjson_export,
    receive_as_lambda_event,
    spaced_events,
    sqs_event,
    sqs_record,
    window_filter,
)

RUNNER = "handlers.export_runner.runner"


@pytest.fixture
def runner(runner_env: dict[str, str]) -> Any:
    return cold_start(RUNNER)


def object_keys(bucket: str) -> list[str]:
    return [item["Key"] for item in client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize(("export_format", "parse"), [("csv", parse_csv_export), ("json", parse_ndjson_export)])
def test_a_queued_export_is_downloadable_and_matches_the_database(
    runner: Any, export_db: ExportDatabase, export_queue: str, exports_bucket: str, export_format: str, parse: Any
) -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 40) + spaced_events(other, 5))
        job = create_export_job(
            conn,
            ExportRequest(tenant_id=tenant, requested_by_actor_id="op", filter=window_filter(), format=export_format),
            queue_url=export_queue,
        )
    event = receive_as_lambda_event(export_queue)
    assert len(event["Records"]) == 1

    response = runner.handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    with export_db.connect() as conn:
        done = jobs.get_job(conn, job.job_id)
        expected = expected_export_rows(
            conn, tenant_id=tenant, since=WINDOW_START, until=WINDOW_START + timedelta(days=30)
        )
    assert done is not None and done.status == "complete" and done.job_error is None
    extension = "csv" if export_format == "csv" else "ndjson"
    assert done.s3_key == f"{tenant}/{job.job_id}.{extension}"
    assert done.presigned_url and done.presigned_url_expires_at and done.completed_at
    assert parse_qs(urlparse(done.presigned_url).query)["X-Amz-Expires"] == ["900"]
    assert timedelta(seconds=890) < done.presigned_url_expires_at - done.completed_at <= timedelta(seconds=900)

    body, headers = download(done.presigned_url)
    assert headers["content-type"] == ("text/csv" if export_format == "csv" else "application/x-ndjson")
    rows = parse(body)
    assert len(rows) == 40
    assert rows == expected


def test_bad_messages_fail_alone(runner: Any, export_db: ExportDatabase, exports_bucket: str) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 3))
        good_job = insert_job_row(conn, tenant_id=tenant)
    records = [
        sqs_record("this is not json", message_id="not-json"),
        sqs_record('{"job": "x"}', message_id="no-job-id"),
        sqs_record('{"jobId": "12345"}', message_id="not-a-uuid"),
        sqs_record(f'{{"jobId": "{good_job}"}}', message_id="good"),
    ]

    response = runner.handler(sqs_event(records), LambdaContext())

    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": "not-json"},
            {"itemIdentifier": "no-job-id"},
            {"itemIdentifier": "not-a-uuid"},
        ]
    }
    with export_db.connect() as conn:
        assert jobs.get_job(conn, good_job).status == "complete"  # type: ignore[union-attr]


@pytest.mark.parametrize("status", ["running", "complete"])
def test_a_job_that_is_not_queued_is_acknowledged_without_work(
    runner: Any, export_db: ExportDatabase, exports_bucket: str, status: str
) -> None:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=tenant)
        conn.execute(
            "UPDATE compliance.export_jobs SET status = %s, started_at = now(), s3_key = 'k', presigned_url = 'u',"
            " presigned_url_expires_at = now(), completed_at = CASE WHEN %s = 'complete' THEN now() END"
            " WHERE job_id = %s",
            (status, status, job_id),
        )
        before = jobs.get_job(conn, job_id)

    response = runner.handler(sqs_event([sqs_record(f'{{"jobId": "{job_id}"}}')]), LambdaContext())

    assert response == {"batchItemFailures": []}
    with export_db.connect() as conn:
        assert jobs.get_job(conn, job_id) == before
    assert object_keys(exports_bucket) == []


def test_an_unknown_job_is_acknowledged(runner: Any, exports_bucket: str) -> None:
    response = runner.handler(sqs_event([sqs_record(f'{{"jobId": "{uuid.uuid4()}"}}')]), LambdaContext())
    assert response == {"batchItemFailures": []}
    assert object_keys(exports_bucket) == []


def test_missing_settings_fail_the_cold_start(runner_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPLIANCE_EXPORTS_BUCKET")
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigurationError, match=r"COMPLIANCE_EXPORTS_BUCKET is required.*DATABASE_SECRET_ARN"):
        cold_start(RUNNER)


def test_the_presign_ttl_setting_is_honoured(
    runner_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, export_db: ExportDatabase, exports_bucket: str
) -> None:
    monkeypatch.setenv("PRESIGN_TTL_SECONDS", "120")
    runner = cold_start(RUNNER)
    with export_db.connect() as conn:
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4())
    runner.handler(sqs_event([sqs_record(f'{{"jobId": "{job_id}"}}')]), LambdaContext())
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None and job.presigned_url is not None and job.presigned_url_expires_at is not None
    assert parse_qs(urlparse(job.presigned_url).query)["X-Amz-Expires"] == ["120"]
    assert job.presigned_url_expires_at <= datetime.now(UTC) + timedelta(seconds=120)
