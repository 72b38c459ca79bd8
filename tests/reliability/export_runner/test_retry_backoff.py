"""Issue #9 item 8: a failure before the claim comes back after a short, growing backoff.

The queue's visibility timeout is 6 x 900 s: before the fix a message reported after a database
outage came back only after 90 minutes. Now the runner shortens the failed message's visibility
(ChangeMessageVisibility) to the backoff for its receive count before reporting it.
"""

import json
import time
import uuid
from typing import Any

import psycopg
import pytest

from handlers.common.aws import client
from handlers.export_runner import jobs
from handlers.export_runner.settings import RunnerSettings, runner_settings
from tests.support.export_fixtures import (
    ExportDatabase,
    LambdaContext,
    bulk_append,
    cold_start,
    insert_job_row,
    receive_as_lambda_event,
    spaced_events,
)

PRODUCTION_VISIBILITY = 5400


def set_connections(export_db: ExportDatabase, allowed: bool) -> None:
    with psycopg.connect(export_db.cluster.url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{export_db.name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')


def receive_within(queue_url: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = receive_as_lambda_event(queue_url)
        if event["Records"]:
            return event
    return {"Records": []}


def test_retry_delay_grows_with_the_receive_count_and_is_bounded() -> None:
    settings = runner_settings({"COMPLIANCE_EXPORTS_BUCKET": "b", "DATABASE_URL": "postgresql://x@h/db"})
    assert [settings.retry_delay(count) for count in range(0, 9)] == [30, 30, 60, 120, 240, 480, 900, 900, 900]
    bounded = RunnerSettings(bucket="b", database=settings.database, presign_ttl_seconds=900, retry_backoff_seconds=5,
                             retry_backoff_max_seconds=12)  # fmt: skip
    assert [bounded.retry_delay(count) for count in (1, 2, 3, 10_000)] == [5, 10, 12, 12]


def test_a_database_outage_is_retried_after_the_backoff_not_the_visibility_timeout(
    runner_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    export_db: ExportDatabase,
    export_queue: str,
) -> None:
    monkeypatch.setenv("RETRY_BACKOFF_SECONDS", "1")
    monkeypatch.setenv("RETRY_BACKOFF_MAX_SECONDS", "2")
    runner = cold_start("handlers.export_runner.runner")
    sqs = client("sqs")
    sqs.set_queue_attributes(QueueUrl=export_queue, Attributes={"VisibilityTimeout": str(PRODUCTION_VISIBILITY)})
    tenant = uuid.uuid4()
    with export_db.connect() as conn:
        bulk_append(conn, spaced_events(tenant, 10))
        job_id = insert_job_row(conn, tenant_id=tenant)
    sqs.send_message(QueueUrl=export_queue, MessageBody=json.dumps({"jobId": str(job_id)}))

    returned_after: list[float] = []
    set_connections(export_db, allowed=False)
    try:
        event = receive_as_lambda_event(export_queue)
        for receive_count, backoff in ((1, 1), (2, 2)):
            (record,) = event["Records"]
            assert record["attributes"]["ApproximateReceiveCount"] == str(receive_count)
            response = runner.handler(event, LambdaContext())
            assert response == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
            failed_at = time.monotonic()
            event = receive_within(export_queue, backoff + 5)
            returned_after.append(time.monotonic() - failed_at)
            assert event["Records"], f"not redelivered {backoff + 5} s after receive {receive_count}"
            assert returned_after[-1] >= backoff - 0.5
    finally:
        set_connections(export_db, allowed=True)

    assert returned_after[0] < 5 and returned_after[1] < 6  # not 5400 s
    assert runner.handler(event, LambdaContext()) == {"batchItemFailures": []}
    with export_db.connect() as conn:
        job = jobs.get_job(conn, job_id)
    assert job is not None and job.status == "complete"
