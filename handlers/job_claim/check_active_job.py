"""CheckActiveJob state: {"pair","threadId","messageId"} -> is a job running, and interrupt it?

- no row, or ``expires_at`` in the past (TTL deletion lags): no active job;
- the row is this thread's (or this very message's): active, no interrupt;
- another thread's live job: mark it (``interrupt_requested_by``, conditional on the message id
  read, so a job that ended meanwhile is not marked) and publish the interrupt to its container.

Crash windows: marked but not published -> the retry marks again (same value) and publishes; the
worker also sees the mark at its next heartbeat. Published twice -> the worker stops once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.dynamo_items import to_plain
from handlers.common.observability import add_count, observability
from handlers.job_claim import schema
from handlers.job_claim.interrupts import send_interrupt
from handlers.job_claim.settings import SERVICE, load

MAX_ROUNDS = 3

settings = load("check-active-job", schema.ENV_ACTIVE_JOBS_TABLE, schema.ENV_INTERRUPTS_TOPIC_ARN)
logger, metrics, tracer = observability(SERVICE)


def _no_job() -> dict[str, Any]:
    return {"hasActiveJob": False, "activeMessageId": None, "interruptSent": False, "containerId": None}


def check_active_job(
    *, table: str, topic_arn: str, pair: str, thread_id: str, message_id: str, now_s: Callable[[], float] = time.time
) -> dict[str, Any]:
    ddb = client("dynamodb")
    for _ in range(MAX_ROUNDS):
        item = to_plain(ddb.get_item(TableName=table, Key={schema.PAIR: {"S": pair}}, ConsistentRead=True).get("Item"))
        if item is None or int(item.get(schema.TTL_ATTRIBUTE, 0)) < now_s():
            return _no_job()
        active_id = str(item[schema.MESSAGE_ID])
        container_id = item.get(schema.ACTIVE_CONTAINER_ID)
        if item.get(schema.THREAD_ID) == thread_id or active_id == message_id:
            return {
                "hasActiveJob": True,
                "activeMessageId": active_id,
                "interruptSent": False,
                "containerId": container_id,
            }
        try:
            ddb.update_item(
                TableName=table,
                Key={schema.PAIR: {"S": pair}},
                UpdateExpression="SET #by = :msg",
                ConditionExpression="#mid = :seen",
                ExpressionAttributeNames={"#by": schema.ACTIVE_INTERRUPT_REQUESTED_BY, "#mid": schema.MESSAGE_ID},
                ExpressionAttributeValues={":msg": {"S": message_id}, ":seen": {"S": active_id}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            continue  # the job ended or another started meanwhile: look again
        send_interrupt(
            topic_arn=topic_arn,
            pair=pair,
            container_id=str(container_id),
            interrupted_message_id=active_id,
            by_message_id=message_id,
        )
        return {"hasActiveJob": True, "activeMessageId": active_id, "interruptSent": True, "containerId": container_id}
    raise RuntimeError(f"the active job of {pair} kept changing under us")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(pair=event["pair"], message_id=event["messageId"])
    result = check_active_job(
        table=settings[schema.ENV_ACTIVE_JOBS_TABLE],
        topic_arn=settings[schema.ENV_INTERRUPTS_TOPIC_ARN],
        pair=event["pair"],
        thread_id=event["threadId"],
        message_id=event["messageId"],
    )
    if result["interruptSent"]:
        logger.info("Interrupted the active job", extra=result)
        add_count(metrics, "interrupt_sent")
    return result
