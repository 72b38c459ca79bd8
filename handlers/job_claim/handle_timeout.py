"""HandleTimeout state: the task timed out (heartbeat or overall); works with no owner at all.

Input {"messageId","pair","threadId","error","cause", ...the email; optionally "execution"}.
1. delete the active-job row only if it is still this message's (conditional; absent is fine);
2. record the timeout: a row in interruptions with ``kind`` = "timed_out" (conditional put, so a
   retry does not rewrite it; the thread's interruption count is not raised -- a timeout is not
   an interruption);
3. send {error, input, execution, timestamp} to the email DLQ (standard queue; a retry after a
   crash between 2 and 3 sends again -- at-least-once, deduplicate on input.messageId).
Nothing here reads ownership or a container id (the seed's handler failed without one).
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.dynamo_items import serialize_values
from handlers.common.observability import add_count, observability
from handlers.job_claim import schema
from handlers.job_claim.rows import delete_active_if_ours
from handlers.job_claim.settings import SERVICE, load

settings = load(
    "handle-timeout", schema.ENV_ACTIVE_JOBS_TABLE, schema.ENV_INTERRUPTIONS_TABLE, schema.ENV_EMAIL_DLQ_URL
)
logger, metrics, tracer = observability(SERVICE)


def handle_timeout(
    *, active_table: str, interruptions_table: str, dlq_url: str, event: dict[str, Any], now_ms: int | None = None
) -> dict[str, Any]:
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    message_id, pair = event["messageId"], event["pair"]
    removed = delete_active_if_ours(active_table, pair, message_id)
    row = {
        schema.MESSAGE_ID: message_id,
        schema.THREAD_ID: event.get("threadId"),
        schema.PROJECT: event.get("project"),
        schema.USER: event.get("user"),
        schema.PAIR: pair,
        schema.KIND: schema.KIND_TIMED_OUT,
        schema.INTERRUPTED_AT_MS: now_ms,
        "error": event.get("error"),
        schema.TTL_ATTRIBUTE: now_ms // 1000 + schema.INTERRUPTION_TTL_SECONDS,
    }
    recorded = True
    try:
        client("dynamodb").put_item(
            TableName=interruptions_table,
            Item=serialize_values({k: v for k, v in row.items() if v is not None}),
            ConditionExpression="attribute_not_exists(#mid)",
            ExpressionAttributeNames={"#mid": schema.MESSAGE_ID},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        recorded = False  # a retry (or the message was recorded before)
    timestamp = datetime.datetime.fromtimestamp(now_ms / 1000, tz=datetime.UTC).isoformat()
    body = {
        "error": {"Error": event.get("error") or "States.Timeout", "Cause": event.get("cause")},
        "input": event,
        "execution": event.get("execution"),
        "timestamp": timestamp,
    }
    client("sqs").send_message(QueueUrl=dlq_url, MessageBody=json.dumps(body, default=str))
    return {"timedOut": True, "activeJobRemoved": removed, "recorded": recorded}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(pair=event.get("pair"), message_id=event.get("messageId"))
    result = handle_timeout(
        active_table=settings[schema.ENV_ACTIVE_JOBS_TABLE],
        interruptions_table=settings[schema.ENV_INTERRUPTIONS_TABLE],
        dlq_url=settings[schema.ENV_EMAIL_DLQ_URL],
        event=event,
    )
    logger.warning("Job timed out; sent to the DLQ", extra=result)
    add_count(metrics, "job_timed_out")
    return result
