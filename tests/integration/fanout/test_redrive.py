"""``python -m handlers.fanout redrive``: the on-failure DLQ names a stream range (Lambda's failure
record, DDBStreamBatchInfo), not the records; the command re-reads them from the moto stream,
runs them through the handler logic, and deletes the message only when all of them succeeded."""

from __future__ import annotations

import io
import json
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from handlers.common.aws import client
from handlers.fanout.redrive import EXIT_OK, EXIT_RECORDS_FAILED, EXIT_REFUSED, main, redrive
from tests.support.fanout_fixtures import PR_NUMBER, REPO, pr_task
from tests.support.fanout_stream import FakeLambdaContext, FanOutTables, moto_sent_emails, reported
from tests.support.github_stub import GitHubStub
from tests.support.moto_server import MotoServer


def failure_record(tables: FanOutTables, records: list[dict[str, Any]], **overrides: str) -> str:
    """The message Lambda puts in the stream mapping's on-failure destination for a batch."""
    shard = tables.streams.describe_stream(StreamArn=tables.stream_arn)["StreamDescription"]["Shards"][0]["ShardId"]
    info = {
        "shardId": shard,
        "startSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
        "endSequenceNumber": records[-1]["dynamodb"]["SequenceNumber"],
        "approximateArrivalOfFirstRecord": "2026-12-02T10:00:00Z",
        "approximateArrivalOfLastRecord": "2026-12-02T10:00:01Z",
        "batchSize": len(records),
        "streamArn": tables.stream_arn,
        **overrides,
    }
    return json.dumps(
        {
            "requestContext": {
                "requestId": "r-1",
                "functionArn": FakeLambdaContext().invoked_function_arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": 11,
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": "2026-12-02T10:05:00Z",
            "DDBStreamBatchInfo": info,
        }
    )


@pytest.fixture
def dlq(aws: MotoServer) -> str:
    return str(boto3.client("sqs", endpoint_url=aws.endpoint).create_queue(QueueName="fanout-dlq")["QueueUrl"])


def messages_in(dlq: str) -> int:
    attributes = client("sqs").get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def failed_batch(tables: FanOutTables, github: GitHubStub, fanout: ModuleType) -> list[dict[str, Any]]:
    """Task a's two events; the batch fails on GitHub (what ends in the DLQ after the retries)."""
    pr_task(tables, "a")
    tables.put_event("a", "e1", "pr_created", metadata={"pr_url": "https://github.com/octo/widgets/pull/7"})
    tables.put_event("a", "e2", "task_completed")
    records = tables.read_stream()
    github.fail_next(503, times=1)
    response = fanout.handler(tables.lambda_event(records), FakeLambdaContext())
    assert len(reported(response)) == 2
    return records


def test_redrive_reruns_the_range_and_deletes_the_message(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, dlq: str, aws: MotoServer
) -> None:
    records = failed_batch(tables, github, fanout)
    client("sqs").send_message(QueueUrl=dlq, MessageBody=failure_record(tables, records))
    tables.put_event("a", "e3", "task_failed")  # after the range: not redriven

    status = main(["redrive", "--dlq-url", dlq])

    assert status == EXIT_OK
    comments = github.comments_on(REPO, PR_NUMBER)
    assert len(comments) == 1 and "Completed" in comments[0] and "`e2`" in comments[0]
    assert [m["subject"] for m in moto_sent_emails(aws.endpoint)] == ["[bgagent] Task a completed"]
    assert messages_in(dlq) == 0

    assert main(["redrive", "--dlq-url", dlq]) == EXIT_OK  # nothing left; a second run is harmless
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1


def test_a_redrive_whose_records_fail_again_keeps_the_message(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, dlq: str
) -> None:
    records = failed_batch(tables, github, fanout)
    client("sqs").send_message(QueueUrl=dlq, MessageBody=failure_record(tables, records))
    github.fail_next(503, times=10)
    out = io.StringIO()

    assert redrive(dlq, out=out) == EXIT_RECORDS_FAILED

    assert "FAILED 2 of 2 record(s)" in out.getvalue() and "message kept" in out.getvalue()
    assert messages_in(dlq) == 1


def test_dry_run_reads_the_range_and_changes_nothing(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, dlq: str, aws: MotoServer
) -> None:
    records = failed_batch(tables, github, fanout)
    client("sqs").send_message(QueueUrl=dlq, MessageBody=failure_record(tables, records))
    out = io.StringIO()

    assert redrive(dlq, dry_run=True, out=out) == EXIT_OK

    assert "would redrive 2 record(s)" in out.getvalue()
    assert github.comments_on(REPO, PR_NUMBER) == [] and moto_sent_emails(aws.endpoint) == []
    assert messages_in(dlq) == 1


def test_a_range_past_the_stream_is_refused_naming_shard_and_range(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, dlq: str
) -> None:
    records = failed_batch(tables, github, fanout)
    last = int(records[-1]["dynamodb"]["SequenceNumber"])
    body = failure_record(tables, records, startSequenceNumber=str(last + 100), endSequenceNumber=str(last + 101))
    client("sqs").send_message(QueueUrl=dlq, MessageBody=body)
    out = io.StringIO()

    assert redrive(dlq, out=out) == EXIT_REFUSED

    shard = json.loads(body)["DDBStreamBatchInfo"]["shardId"]
    assert f"REFUSED shard {shard} sequence numbers {last + 100}..{last + 101}" in out.getvalue()
    assert "expired" in out.getvalue()
    assert github.comments_on(REPO, PR_NUMBER) == []
    assert messages_in(dlq) == 1


def test_records_trimmed_from_the_stream_are_refused_and_the_message_kept(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, dlq: str
) -> None:
    records = failed_batch(tables, github, fanout)
    client("sqs").send_message(QueueUrl=dlq, MessageBody=failure_record(tables, records))
    out = io.StringIO()
    # moto keeps every record; AWS answers this once the range is past the 24 h retention.
    with Stubber(client("dynamodbstreams")) as streams:
        streams.add_client_error("get_shard_iterator", service_error_code="TrimmedDataAccessException")
        status = redrive(dlq, out=out)

    assert status == EXIT_REFUSED
    assert "TrimmedDataAccessException" in out.getvalue() and "shard " in out.getvalue()
    assert github.comments_on(REPO, PR_NUMBER) == []
    assert messages_in(dlq) == 1


def test_a_message_that_is_not_a_stream_failure_record_is_refused(dlq: str, aws: MotoServer) -> None:
    client("sqs").send_message(QueueUrl=dlq, MessageBody='{"hello": "world"}')
    out = io.StringIO()

    assert redrive(dlq, out=out) == EXIT_REFUSED
    assert "DDBStreamBatchInfo" in out.getvalue()
    assert messages_in(dlq) == 1
