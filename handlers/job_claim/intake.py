"""Intake Lambda (S3 ObjectCreated on the email bucket): one execution per email.

Per record: read the object, take its message id from the headers, start an execution named
``execution_name(message_id)`` with input {"bucket", "key", "messageId"}. A duplicate
notification (or a retry after a crash between StartExecution and the return) meets
``ExecutionAlreadyExists``: success, the execution exists once. Any other failure raises: the
asynchronous invoke retries, then the function's DLQ keeps the event.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.observability import add_count, observability
from handlers.job_claim import schema
from handlers.job_claim.email_message import execution_name, message_id_of
from handlers.job_claim.settings import SERVICE, load

settings = load("intake", schema.ENV_STATE_MACHINE_ARN)
logger, metrics, tracer = observability(SERVICE)


def start_for(bucket: str, key: str) -> dict[str, Any]:
    raw = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    message_id = message_id_of(raw)
    name = execution_name(message_id)
    try:
        client("stepfunctions").start_execution(
            stateMachineArn=settings[schema.ENV_STATE_MACHINE_ARN],
            name=name,
            input=json.dumps({"bucket": bucket, "key": key, "messageId": message_id}),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
        logger.info("Execution already exists: a duplicate notification", extra={"execution_name": name})
        add_count(metrics, "intake_duplicate")
        return {"messageId": message_id, "executionName": name, "started": False}
    logger.info("Execution started", extra={"execution_name": name, "message_id": message_id})
    add_count(metrics, "intake_started")
    return {"messageId": message_id, "executionName": name, "started": True}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    results = []
    for record in event.get("Records", []):
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # S3 notifications URL-encode the key
        logger.append_keys(bucket=bucket, key=key)
        results.append(start_for(bucket, key))
    return {"executions": results}
