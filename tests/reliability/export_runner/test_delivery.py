"""At-least-once delivery: duplicates, races, redeliveries, crashes between effect and guard."""

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from aws_lambda_powertools import Logger

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.export_job import Outcome, RunnerDependencies, run_export_job
from handlers.export_runner.exporter import stream_copy_to_s3
from handlers.export_runner.filters import FORMATS, export_copy_statement, object_key, parse_filter
from handlers.export_runner.producer import ExportRequest, ExportRequestError, create_export_job
from handlers.export_runner.storage import s3_client
from tests.support.export_fixtures import (
    ExportDatabase,
    LambdaContext,
    bulk_append,
    cold_start,
    insert_job_row,
    parse_csv_export,
    spaced_events,
    sqs_event,
    sqs_record,
    window_filter,
)

LOGGER = Logger(service="export-runner-test")


@pytest.fixture
def runner(runner_env: dict[str, str]) -> Any:
    return cold_start("handlers.export_runner.runner")


def objects(bucket: str) -> dict[str, bytes]:
    s3 = s3_client()
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def seeded_job(export_db: ExportDatabase, rows: int = 20) -> tuple[uuid.UUID, uuid.UUID]:
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, rows))
        return tenant, insert_job_row(conn, tenant_id=tenant)


def get(export_db: ExportDatabase, job_id: uuid.UUID) -> jobs.ExportJob:
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None
    return job


def test_a_duplicate_delivery_exports_once(runner: Any, export_db: ExportDatabase, exports_bucket: str) -> None:
    tenant, job_id = seeded_job(export_db)
    message = sqs_record(json.dumps({"jobId": str(job_id)}), message_id="m-1")

    assert runner.handler(sqs_event([message]), LambdaContext()) == {"batchItemFailures": []}
    first = get(export_db, job_id)
    redelivered = sqs_record(message["body"], message_id="m-1", receive_count=2)
    assert runner.handler(sqs_event([redelivered]), LambdaContext()) == {"batchItemFailures": []}

    assert get(export_db, job_id) == first  # same URL, same completion time: nothing ran twice
    stored = objects(exports_bucket)
    assert list(stored) == [f"{tenant}/{job_id}.csv", f"{tenant}/{job_id}.csv.manifest.json"]
    assert len(parse_csv_export(stored[f"{tenant}/{job_id}.csv"])) == 20


def test_racing_runners_export_once(export_db: ExportDatabase, exports_bucket: str) -> None:
    tenant, job_id = seeded_job(export_db, rows=500)
    deps = RunnerDependencies(
        database=export_db.database(), s3=s3_client(), bucket=exports_bucket, presign_ttl_seconds=900
    )
    start = threading.Barrier(2)
    outcomes: list[Outcome] = []

    def runner() -> None:
        start.wait()
        outcomes.append(run_export_job(job_id, deps, logger=LOGGER).outcome)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == [Outcome.COMPLETED, Outcome.SKIPPED_NOT_QUEUED]
    stored = objects(exports_bucket)
    assert (
        list(stored) == [f"{tenant}/{job_id}.csv", f"{tenant}/{job_id}.csv.manifest.json"]
        and len(parse_csv_export(stored[f"{tenant}/{job_id}.csv"])) == 500
    )
    assert s3_client().list_multipart_uploads(Bucket=exports_bucket).get("Uploads", []) == []


def set_connections(export_db: ExportDatabase, allowed: bool) -> None:
    with psycopg.connect(export_db.cluster.url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{export_db.name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')


def test_a_database_outage_before_the_claim_is_retried_by_redelivery(
    runner: Any, export_db: ExportDatabase, exports_bucket: str
) -> None:
    tenant, job_id = seeded_job(export_db)
    body = json.dumps({"jobId": str(job_id)})
    set_connections(export_db, allowed=False)
    try:
        response = runner.handler(sqs_event([sqs_record(body, message_id="m-1")]), LambdaContext())
    finally:
        set_connections(export_db, allowed=True)
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    assert get(export_db, job_id).status == "queued" and objects(exports_bucket) == {}

    redelivered = runner.handler(sqs_event([sqs_record(body, message_id="m-1", receive_count=2)]), LambdaContext())

    assert redelivered == {"batchItemFailures": []}
    assert get(export_db, job_id).status == "complete"
    assert list(objects(exports_bucket)) == [f"{tenant}/{job_id}.csv", f"{tenant}/{job_id}.csv.manifest.json"]


def test_poison_messages_reach_the_dlq_and_good_ones_complete(
    runner: Any, export_db: ExportDatabase, exports_bucket: str
) -> None:
    """The event source mapping, played for real against moto: receive, invoke, delete the rest."""
    sqs = client("sqs")
    dlq_url = sqs.create_queue(QueueName="exports-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName="exports",
        Attributes={
            "VisibilityTimeout": "0",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    _, job_id = seeded_job(export_db)
    for body in ("{not json", json.dumps({"jobId": str(job_id)}), json.dumps({"jobId": "123"})):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    for _ in range(12):
        received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, AttributeNames=["All"])
        for message in received.get("Messages", []):
            record = sqs_record(
                message["Body"],
                message_id=message["MessageId"],
                receive_count=int(message["Attributes"]["ApproximateReceiveCount"]),
            )
            failures = runner.handler(sqs_event([record]), LambdaContext())["batchItemFailures"]
            if not failures:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    dead = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10).get("Messages", [])
    assert sorted(message["Body"] for message in dead) == sorted(["{not json", json.dumps({"jobId": "123"})])
    assert sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []) == []
    assert get(export_db, job_id).status == "complete"


def test_a_crash_right_after_the_claim_leaves_the_job_to_the_sweeper(
    runner: Any, export_db: ExportDatabase, exports_bucket: str
) -> None:
    _, job_id = seeded_job(export_db)
    with export_db.connect() as conn:
        assert jobs.claim_job(conn, job_id)  # ...and the container dies here

    redelivered = runner.handler(sqs_event([sqs_record(json.dumps({"jobId": str(job_id)}))]), LambdaContext())

    assert redelivered == {"batchItemFailures": []}  # the claim turns the redelivery into a no-op
    assert get(export_db, job_id).status == "running" and objects(exports_bucket) == {}
    with export_db.connect() as conn:
        jobs.sweep_jobs(conn, running_longer_than=timedelta(0), queued_longer_than=timedelta(days=1))
    swept = get(export_db, job_id)
    assert swept.status == "failed" and swept.job_error.startswith("timed out")  # type: ignore[union-attr]


def test_a_crash_between_the_upload_and_the_job_update_never_shows_a_complete_job_without_object(
    runner: Any, export_db: ExportDatabase, exports_bucket: str
) -> None:
    tenant, job_id = seeded_job(export_db)
    with export_db.connect() as conn:
        assert jobs.claim_job(conn, job_id)
    statement, params = export_copy_statement(
        tenant, parse_filter(window_filter(), job_tenant_id=tenant), FORMATS["csv"]
    )
    key = object_key(tenant, job_id, FORMATS["csv"])
    with export_db.connect() as conn:
        stream_copy_to_s3(
            conn, statement, params, s3=s3_client(), bucket=exports_bucket, key=key, content_type="text/csv"
        )
    # ...the container dies before recording completion.

    assert runner.handler(sqs_event([sqs_record(json.dumps({"jobId": str(job_id)}))]), LambdaContext()) == {
        "batchItemFailures": []
    }
    with export_db.connect() as conn:
        jobs.sweep_jobs(conn, running_longer_than=timedelta(0), queued_longer_than=timedelta(days=1))
    swept = get(export_db, job_id)
    assert (swept.status, swept.presigned_url) == ("failed", None)
    # The object is an orphan nobody is pointed to; the bucket's 7-day expiry removes it.
    assert list(objects(exports_bucket)) == [key]


def test_a_job_whose_message_never_left_is_expired_by_the_sweeper(export_db: ExportDatabase) -> None:
    with export_db.connect() as conn:
        # The producer committed the job, then died before sending its message.
        job_id = insert_job_row(conn, tenant_id=uuid.uuid4())
        conn.execute(
            "UPDATE compliance.export_jobs SET requested_at = now() - interval '2 days' WHERE job_id = %s", (job_id,)
        )
        swept = jobs.sweep_jobs(conn, running_longer_than=timedelta(hours=1), queued_longer_than=timedelta(hours=25))
    assert [(job.job_id, job.previous_status) for job in swept] == [(job_id, "queued")]
    assert get(export_db, job_id).job_error.startswith("never started")  # type: ignore[union-attr]


def test_concurrent_requests_cannot_exceed_the_rate_limit(export_db: ExportDatabase, export_queue: str) -> None:
    results: list[str] = []
    start = threading.Barrier(12)

    def request() -> None:
        with export_db.connect() as conn:
            start.wait()
            try:
                create_export_job(
                    conn,
                    ExportRequest(
                        tenant_id=uuid.uuid4(), requested_by_actor_id="eager", filter=window_filter(), format="csv"
                    ),
                    queue_url=export_queue,
                )
                results.append("created")
            except ExportRequestError as exc:
                results.append(exc.code)

    threads = [threading.Thread(target=request) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == ["RATE_LIMIT_EXCEEDED"] * 2 + ["created"] * 10
    sqs = client("sqs")
    delivered = 0
    while messages := sqs.receive_message(QueueUrl=export_queue, MaxNumberOfMessages=10).get("Messages", []):
        delivered += len(messages)
    assert delivered == 10
