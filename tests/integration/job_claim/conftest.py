"""JobClaim fixtures: the tables, queues and topic in moto, and handler modules loaded with their env."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
import pytest

from handlers.job_claim import schema
from tests.support.job_claim_tables import JobClaimTables, create_job_claim_tables
from tests.support.moto_server import MotoServer


@dataclass(frozen=True)
class FakeContext:
    function_name: str = "job-claim-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:job-claim-test"
    aws_request_id: str = "req-1"


@dataclass(frozen=True)
class JobClaimEnv:
    tables: JobClaimTables
    input_queue_url: str
    unclaimed_queue_url: str
    email_dlq_url: str
    topic_arn: str
    bucket: str


@pytest.fixture
def ddb(aws: MotoServer) -> Any:
    return boto3.client("dynamodb")


@pytest.fixture
def job_claim(aws: MotoServer, ddb: Any, monkeypatch: pytest.MonkeyPatch) -> JobClaimEnv:
    tables = create_job_claim_tables(ddb)
    sqs = boto3.client("sqs")
    input_url = sqs.create_queue(
        QueueName="jc-input.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true", "VisibilityTimeout": "3600"},
    )["QueueUrl"]
    unclaimed = sqs.create_queue(QueueName="jc-unclaimed")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="jc-email-dlq")["QueueUrl"]
    topic = boto3.client("sns").create_topic(Name="jc-interrupts")["TopicArn"]
    boto3.client("s3").create_bucket(Bucket="jc-emails")
    env = JobClaimEnv(tables, input_url, unclaimed, dlq, topic, "jc-emails")
    for name, value in tables.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(schema.ENV_INPUT_QUEUE_URL, input_url)
    monkeypatch.setenv(schema.ENV_UNCLAIMED_QUEUE_URL, unclaimed)
    monkeypatch.setenv(schema.ENV_EMAIL_DLQ_URL, dlq)
    monkeypatch.setenv(schema.ENV_INTERRUPTS_TOPIC_ARN, topic)
    monkeypatch.setenv(schema.ENV_STATE_MACHINE_ARN, "arn:aws:states:us-east-1:123456789012:stateMachine:unset")
    monkeypatch.delenv(schema.ENV_EMAIL_DOMAIN, raising=False)
    return env


@pytest.fixture
def load_handler(job_claim: JobClaimEnv) -> Callable[[str], ModuleType]:
    """Import (or re-import) ``handlers.job_claim.<name>`` so its cold start reads this test's env."""

    def load(name: str) -> ModuleType:
        return importlib.reload(importlib.import_module(f"handlers.job_claim.{name}"))

    return load


def receive_all(queue_url: str, *, wait: int = 1) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    bodies: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait).get(
            "Messages", []
        )
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        wait = 0
