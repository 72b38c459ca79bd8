"""Tiny Lambda handlers that moto runs in the harness tests (tests/integration/harness).

Test-only code, so it lives here and not under handlers/: a function created with the Handler
``tests.support.sample_handlers.<name>`` runs it through ``lambda_runs_handlers``.
Module-level code is the cold start: ``GREETING`` is read once per container, ``_attempts``
survives between invocations of one (warm) container.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

if os.environ.get("SAMPLE_FAIL_AT_INIT"):
    raise RuntimeError("SAMPLE_FAIL_AT_INIT is set: this cold start fails")

GREETING = os.environ.get("SAMPLE_GREETING", "")
_attempts: dict[str, int] = {}
logger = Logger(service="harness-sample")


class SampleError(Exception):
    """What ``fail`` raises: its name is the errorType a Catch matches."""


class TransientError(Exception):
    """What ``flaky`` raises before it succeeds: a Retry matches it."""


@functools.cache
def _client(service: str) -> Any:
    return boto3.client(service)


def _context_fields(context: Any) -> dict[str, Any]:
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


@logger.inject_lambda_context  # reads the context's fields as Powertools does in our handlers
def echo(event: Any, context: Any) -> dict[str, Any]:
    """The event, the variables named in ``event["env"]``, the cold-start greeting and the context."""
    names = event.get("env", []) if isinstance(event, dict) else []
    return {
        "event": event,
        "env": {name: os.environ.get(name) for name in names},
        "greeting": GREETING,
        "module": __name__,
        "context": _context_fields(context),
    }


def set_env(event: dict[str, str], context: Any) -> dict[str, str | None]:
    """Set ``event["name"]`` to ``event["value"]`` in os.environ; report what it was before."""
    before = os.environ.get(event["name"])
    os.environ[event["name"]] = event["value"]
    return {"before": before}


def fail(event: Any, context: Any) -> None:
    raise SampleError(event.get("message", "boom") if isinstance(event, dict) else "boom")


def remaining_after_sleep(event: dict[str, Any], context: Any) -> dict[str, int]:
    before = context.get_remaining_time_in_millis()
    time.sleep(float(event["seconds"]))
    return {"before": before, "after": context.get_remaining_time_in_millis()}


def record(event: Any, context: Any) -> dict[str, str]:
    """Store the event in s3://$SAMPLE_RECORD_BUCKET/invocations/<request id>.json."""
    key = f"invocations/{context.aws_request_id}.json"
    body = json.dumps({"function_name": context.function_name, "event": event})
    _client("s3").put_object(Bucket=os.environ["SAMPLE_RECORD_BUCKET"], Key=key, Body=body.encode())
    return {"key": key}


def _sqs_record(record: SQSRecord) -> None:
    _client("s3").put_object(
        Bucket=os.environ["SAMPLE_RECORD_BUCKET"],
        Key=f"messages/{record.message_id}.json",
        Body=json.dumps({"body": record.body, "receive_count": record.attributes.approximate_receive_count}),
    )
    if record.body.startswith("fail"):
        raise SampleError(f"cannot process {record.body}")


def sqs_batch(event: dict[str, Any], context: Any) -> Any:
    """Record every message; report those whose body starts with "fail" as batch item failures;
    a body starting with "raise" fails the whole invocation (a function error)."""
    if any(r["body"].startswith("raise") for r in event["Records"]):
        for r in event["Records"]:
            _sqs_record(SQSRecord(r))
        raise SampleError("raise requested")
    return process_partial_response(
        event=event,
        record_handler=_sqs_record,
        processor=BatchProcessor(EventType.SQS, raise_on_entire_batch_failure=False),
        context=context,
    )


def flaky(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fail with TransientError ``event["failures"]`` times per ``event["key"]``, then succeed."""
    key = str(event["key"])
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] <= int(event["failures"]):
        raise TransientError(f"attempt {_attempts[key]} of {key} fails")
    return {"key": key, "attempts": _attempts[key]}


def invoke_other(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Invoke ``event["function"]`` synchronously (a nested invocation) and report both envs."""
    response = _client("lambda").invoke(FunctionName=event["function"], Payload=json.dumps(event["payload"]))
    inner = json.loads(response["Payload"].read())
    return {"mine": {name: os.environ.get(name) for name in event["payload"]["env"]}, "inner": inner}


def answer_task_tokens(event: dict[str, Any], context: Any) -> None:
    """SQS consumer of a ``.waitForTaskToken`` task: answer each message's ``token`` with its ``answer``."""
    for r in event["Records"]:
        message = json.loads(r["body"])
        _client("stepfunctions").send_task_success(
            taskToken=message["token"], output=json.dumps({"answer": message.get("answer")})
        )
