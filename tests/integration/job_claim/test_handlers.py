"""The JobClaim Lambda handlers against the atomic moto server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from email.message import EmailMessage
from types import ModuleType
from typing import Any

import boto3
import pytest

from handlers.job_claim import schema
from handlers.job_claim.email_message import UnroutableEmailError, execution_name
from tests.integration.job_claim.conftest import FakeContext, JobClaimEnv, receive_all

CONTEXT = FakeContext()
PAIR = "acme#bob"


def put_email(env: JobClaimEnv, key: str, *, message_id: str = "<m1@example.com>", to: str = "acme+bob@x.com") -> bytes:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = to
    message["Subject"] = "Build"
    if message_id:
        message["Message-ID"] = message_id
    message.set_content("Please build it.")
    message.add_attachment(b"PDFDATA", maintype="application", subtype="pdf", filename="../spec sheet.pdf")
    raw = message.as_bytes()
    boto3.client("s3").put_object(Bucket=env.bucket, Key=key, Body=raw)
    return raw


def s3_event(bucket: str, encoded_key: str) -> dict[str, Any]:
    return {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": encoded_key}}}]}


def active_row(env: JobClaimEnv, *, message_id: str, thread_id: str, container: str = "c-1", ttl: int = 3600) -> None:
    boto3.client("dynamodb").put_item(
        TableName=env.tables.active_jobs,
        Item={
            schema.PAIR: {"S": PAIR},
            schema.MESSAGE_ID: {"S": message_id},
            schema.THREAD_ID: {"S": thread_id},
            schema.ACTIVE_CONTAINER_ID: {"S": container},
            schema.ACTIVE_TASK_TOKEN: {"S": "token"},
            schema.ACTIVE_STARTED_AT_MS: {"N": str(time.time_ns() // 1_000_000)},
            schema.TTL_ATTRIBUTE: {"N": str(int(time.time()) + ttl)},
        },
    )


def get(env: JobClaimEnv, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    item = boto3.client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    return dict(item) if item else None


# -- intake ----------------------------------------------------------------------------------------


def test_intake_starts_one_execution_per_message_and_a_duplicate_is_success(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="jc-dummy",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    monkeypatch.setenv(schema.ENV_STATE_MACHINE_ARN, machine)
    put_email(job_claim, "incoming/a b@c")
    intake = load_handler("intake")

    first = intake.handler(s3_event(job_claim.bucket, "incoming/a+b%40c"), CONTEXT)
    # The same notification again: StartExecution with the same name and input of a running
    # execution answers with that execution (AWS and moto); the same email under another key
    # (SES stored it twice) differs in input: ExecutionAlreadyExists, counted as success.
    again = intake.handler(s3_event(job_claim.bucket, "incoming/a+b%40c"), CONTEXT)
    put_email(job_claim, "incoming/copy")
    copy = intake.handler(s3_event(job_claim.bucket, "incoming/copy"), CONTEXT)

    assert first["executions"][0]["started"] is True and again["executions"][0]["messageId"] == "m1@example.com"
    assert copy["executions"][0]["started"] is False
    executions = sfn.list_executions(stateMachineArn=machine)["executions"]
    assert [e["name"] for e in executions] == [execution_name("m1@example.com")]
    described = sfn.describe_execution(executionArn=executions[0]["executionArn"])
    assert json.loads(described["input"]) == {
        "bucket": "jc-emails",
        "key": "incoming/a b@c",
        "messageId": "m1@example.com",
    }


def test_intake_fails_the_record_when_the_object_is_missing(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    intake = load_handler("intake")
    with pytest.raises(Exception):  # noqa: B017 -- any S3 error: the async invoke retries, then the DLQ
        intake.handler(s3_event(job_claim.bucket, "missing"), CONTEXT)


# -- parse and attachments -------------------------------------------------------------------------


def test_parse_email_and_store_its_attachment(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    put_email(job_claim, "incoming/1")
    parsed = load_handler("parse_email").handler(
        {"bucket": job_claim.bucket, "key": "incoming/1", "messageId": "m1@example.com"}, CONTEXT
    )
    assert parsed["pair"] == PAIR and parsed["threadId"] == "m1@example.com" and parsed["from"] == "alice@example.com"
    assert parsed["attachments"] == [
        {"index": 0, "filename": "../spec sheet.pdf", "contentType": "application/pdf", "size": 7}
    ]

    stored = load_handler("attachments").handler(
        {
            "bucket": job_claim.bucket,
            "key": "incoming/1",
            "messageId": "m1@example.com",
            "attachment": parsed["attachments"][0],
        },
        CONTEXT,
    )
    assert stored["s3Key"] == f"attachments/{execution_name('m1@example.com')}/0-spec_sheet.pdf"
    body = boto3.client("s3").get_object(Bucket=job_claim.bucket, Key=stored["s3Key"])["Body"].read()
    assert body == b"PDFDATA" and stored["size"] == 7 and len(stored["sha256"]) == 64


def test_parse_email_rejects_an_unroutable_email(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    put_email(job_claim, "incoming/2", to="nobody@example.com")
    with pytest.raises(UnroutableEmailError):
        load_handler("parse_email").handler(
            {"bucket": job_claim.bucket, "key": "incoming/2", "messageId": "m"}, CONTEXT
        )


# -- rate-limited claim ----------------------------------------------------------------------------


def test_a_second_claim_request_within_5_minutes_is_rate_limited_and_ownership_is_never_written(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    claim = load_handler("rate_limited_claim")
    first = claim.handler({"pair": PAIR, "messageId": "m1"}, CONTEXT)
    second = claim.handler({"pair": PAIR, "messageId": "m2"}, CONTEXT)
    assert first == {"sent": True, "rateLimited": False}
    assert second == {"sent": False, "rateLimited": True}
    assert receive_all(job_claim.unclaimed_queue_url) == [{"pair": PAIR, "messageId": "m1"}]
    assert boto3.client("dynamodb").scan(TableName=job_claim.tables.ownership)["Items"] == []
    row = get(job_claim, job_claim.tables.claim_requests, {schema.PAIR: {"S": PAIR}})
    assert row is not None and row[schema.MESSAGE_ID] == {"S": "m1"}
    assert abs(int(row[schema.TTL_ATTRIBUTE]["N"]) - (time.time() + 600)) < 30


# -- check-active-job ------------------------------------------------------------------------------


def subscribe(env: JobClaimEnv, container: str) -> str:
    sqs, sns = boto3.client("sqs"), boto3.client("sns")
    url = sqs.create_queue(QueueName=f"interrupts-{container}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(
        TopicArn=env.topic_arn,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"FilterPolicy": json.dumps({"container_id": [container]}), "RawMessageDelivery": "true"},
    )
    return str(url)


def test_no_active_job_and_an_expired_one_count_as_absent(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    check = load_handler("check_active_job")
    event = {"pair": PAIR, "threadId": "t2", "messageId": "m2"}
    absent = {"hasActiveJob": False, "activeMessageId": None, "interruptSent": False, "containerId": None}
    assert check.handler(event, CONTEXT) == absent
    active_row(job_claim, message_id="m1", thread_id="t1", ttl=-10)
    assert check.handler(event, CONTEXT) == absent


def test_the_same_thread_is_active_without_an_interrupt(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    active_row(job_claim, message_id="m1", thread_id="t1")
    result = load_handler("check_active_job").handler({"pair": PAIR, "threadId": "t1", "messageId": "m2"}, CONTEXT)
    assert result == {"hasActiveJob": True, "activeMessageId": "m1", "interruptSent": False, "containerId": "c-1"}
    row = get(job_claim, job_claim.tables.active_jobs, {schema.PAIR: {"S": PAIR}})
    assert row is not None and schema.ACTIVE_INTERRUPT_REQUESTED_BY not in row


def test_another_threads_job_is_marked_and_its_container_gets_the_interrupt(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    mine, other = subscribe(job_claim, "c-1"), subscribe(job_claim, "c-9")
    active_row(job_claim, message_id="m1", thread_id="t1")
    result = load_handler("check_active_job").handler({"pair": PAIR, "threadId": "t2", "messageId": "m2"}, CONTEXT)
    assert result == {"hasActiveJob": True, "activeMessageId": "m1", "interruptSent": True, "containerId": "c-1"}
    row = get(job_claim, job_claim.tables.active_jobs, {schema.PAIR: {"S": PAIR}})
    assert row is not None and row[schema.ACTIVE_INTERRUPT_REQUESTED_BY] == {"S": "m2"}
    assert receive_all(mine) == [{"pair": PAIR, "interruptedMessageId": "m1", "byMessageId": "m2"}]
    assert receive_all(other, wait=0) == []


def test_send_interrupt_handler_addresses_the_container(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    queue = subscribe(job_claim, "c-3")
    event = {"pair": PAIR, "containerId": "c-3", "interruptedMessageId": "m1", "byMessageId": "m2"}
    assert load_handler("send_interrupt").handler(event, CONTEXT)["sent"] is True
    assert receive_all(queue) == [{"pair": PAIR, "interruptedMessageId": "m1", "byMessageId": "m2"}]


# -- record-interruption ---------------------------------------------------------------------------


def test_record_interruption_is_idempotent_and_counts_once(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    active_row(job_claim, message_id="m1", thread_id="t1")
    boto3.client("dynamodb").update_item(
        TableName=job_claim.tables.active_jobs,
        Key={schema.PAIR: {"S": PAIR}},
        UpdateExpression="SET partial_work = :p, interrupt_requested_by = :b",
        ExpressionAttributeValues={":p": {"S": '{"done": 3}'}, ":b": {"S": "m2"}},
    )
    record = load_handler("record_interruption")
    event = {"messageId": "m1", "threadId": "t1", "project": "acme", "user": "bob", "pair": PAIR,
             "error": "PREEMPTED", "cause": None}  # fmt: skip
    assert record.handler(event, CONTEXT) == {"recorded": True, "interruptionCount": 1}
    assert record.handler(event, CONTEXT) == {"recorded": True, "interruptionCount": 1}
    row = get(job_claim, job_claim.tables.interruptions, {schema.MESSAGE_ID: {"S": "m1"}})
    assert row is not None
    assert row[schema.PARTIAL_WORK] == {"S": '{"done": 3}'} and row[schema.INTERRUPTED_BY] == {"S": "m2"}
    assert row["kind"] == {"S": "preempted"}
    assert get(job_claim, job_claim.tables.active_jobs, {schema.PAIR: {"S": PAIR}}) is None

    second = dict(event, messageId="m3", cause='{"done": 1}')
    assert record.handler(second, CONTEXT) == {"recorded": True, "interruptionCount": 2}
    row = get(job_claim, job_claim.tables.interruptions, {schema.MESSAGE_ID: {"S": "m3"}})
    assert row is not None and row[schema.PARTIAL_WORK] == {"S": '{"done": 1}'}


def test_record_interruption_leaves_another_messages_active_row(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    active_row(job_claim, message_id="m9", thread_id="t9")
    event = {"messageId": "m1", "threadId": "t1", "project": "acme", "user": "bob", "pair": PAIR,
             "error": "PREEMPTED", "cause": "not json"}  # fmt: skip
    assert load_handler("record_interruption").handler(event, CONTEXT)["interruptionCount"] == 1
    row = get(job_claim, job_claim.tables.interruptions, {schema.MESSAGE_ID: {"S": "m1"}})
    assert row is not None and schema.PARTIAL_WORK not in row
    assert get(job_claim, job_claim.tables.active_jobs, {schema.PAIR: {"S": PAIR}}) is not None


# -- handle-timeout --------------------------------------------------------------------------------


def test_handle_timeout_works_with_no_owner_and_no_active_row(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    event = {"messageId": "m1", "pair": PAIR, "threadId": "t1", "error": "States.Timeout", "cause": "late",
             "project": "acme", "user": "bob", "subject": "Build", "execution": "arn:exec"}  # fmt: skip
    result = load_handler("handle_timeout").handler(event, CONTEXT)
    assert result == {"timedOut": True, "activeJobRemoved": False, "recorded": True}
    (dead,) = receive_all(job_claim.email_dlq_url)
    assert dead["error"] == {"Error": "States.Timeout", "Cause": "late"}
    assert dead["input"] == event and dead["execution"] == "arn:exec" and dead["timestamp"]
    row = get(job_claim, job_claim.tables.interruptions, {schema.MESSAGE_ID: {"S": "m1"}})
    assert row is not None and row["kind"] == {"S": "timed_out"}


def test_handle_timeout_removes_only_this_messages_active_row(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    handle = load_handler("handle_timeout")
    active_row(job_claim, message_id="m9", thread_id="t9")
    event = {"messageId": "m1", "pair": PAIR, "threadId": "t1", "error": "States.Timeout", "cause": None}
    assert handle.handler(event, CONTEXT)["activeJobRemoved"] is False
    assert get(job_claim, job_claim.tables.active_jobs, {schema.PAIR: {"S": PAIR}}) is not None
    active_row(job_claim, message_id="m2", thread_id="t2")
    assert handle.handler(dict(event, messageId="m2"), CONTEXT)["activeJobRemoved"] is True
    assert get(job_claim, job_claim.tables.active_jobs, {schema.PAIR: {"S": PAIR}}) is None


def test_an_attachment_over_10_mib_is_refused(
    job_claim: JobClaimEnv, load_handler: Callable[[str], ModuleType]
) -> None:
    attachments = load_handler("attachments")
    event = {
        "bucket": job_claim.bucket,
        "key": "incoming/none",
        "messageId": "m1",
        "attachment": {"index": 0, "filename": "big.bin", "contentType": "application/octet-stream", "size": 11 << 20},
    }
    with pytest.raises(attachments.AttachmentTooLargeError):
        attachments.handler(event, CONTEXT)
