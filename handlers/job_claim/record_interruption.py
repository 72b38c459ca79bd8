"""HandleInterruption state: the audit row of a PREEMPTED job and the thread's count.

Input {"messageId","threadId","project","user","pair","error","cause"}. Partial work: the
active-job row's ``partial_work`` while the row is still this message's, else ``cause`` when it
is JSON, else null (stored as JSON text). The interruptions row (TTL 30 d, ``kind`` =
"preempted") and ``ADD interruption_count 1`` on threads[thread_id] are one transaction whose
put is conditional on the row being absent: a retry finds the row and only reads the count, so
the count rises exactly once per interrupted message, whatever crashes between. Then the
active-job row is deleted if it is still this message's.
"""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.dynamo_items import serialize_values, to_plain
from handlers.common.observability import add_count, observability
from handlers.job_claim import schema
from handlers.job_claim.rows import delete_active_if_ours
from handlers.job_claim.settings import SERVICE, load

settings = load(
    "record-interruption", schema.ENV_ACTIVE_JOBS_TABLE, schema.ENV_INTERRUPTIONS_TABLE, schema.ENV_THREADS_TABLE
)
logger, metrics, tracer = observability(SERVICE)


def _partial_from_cause(cause: Any) -> str | None:
    if isinstance(cause, dict | list):
        return json.dumps(cause)
    if not isinstance(cause, str) or not cause:
        return None
    try:
        json.loads(cause)
    except ValueError:
        return None
    return cause


def record_interruption(
    *, active_table: str, interruptions_table: str, threads_table: str, event: dict[str, Any], now_ms: int | None = None
) -> dict[str, Any]:
    ddb = client("dynamodb")
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    message_id, thread_id, pair = event["messageId"], event["threadId"], event["pair"]
    active = to_plain(
        ddb.get_item(TableName=active_table, Key={schema.PAIR: {"S": pair}}, ConsistentRead=True).get("Item")
    )
    ours = active is not None and active.get(schema.MESSAGE_ID) == message_id
    partial: str | None = None
    interrupted_by: str | None = None
    if ours and active is not None:
        raw_partial = active.get(schema.PARTIAL_WORK)
        partial = raw_partial if isinstance(raw_partial, str) or raw_partial is None else json.dumps(raw_partial)
        interrupted_by = active.get(schema.ACTIVE_INTERRUPT_REQUESTED_BY)
    if partial is None:
        partial = _partial_from_cause(event.get("cause"))
    row: dict[str, Any] = {
        schema.MESSAGE_ID: message_id,
        schema.THREAD_ID: thread_id,
        schema.PROJECT: event.get("project"),
        schema.USER: event.get("user"),
        schema.PAIR: pair,
        schema.KIND: schema.KIND_PREEMPTED,
        schema.INTERRUPTED_AT_MS: now_ms,
        schema.INTERRUPTED_BY: interrupted_by,
        schema.PARTIAL_WORK: partial,
        "error": event.get("error"),
        schema.TTL_ATTRIBUTE: now_ms // 1000 + schema.INTERRUPTION_TTL_SECONDS,
    }
    row = {name: value for name, value in row.items() if value is not None}
    created = True
    try:
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": interruptions_table,
                        "Item": serialize_values(row),
                        "ConditionExpression": "attribute_not_exists(#mid)",
                        "ExpressionAttributeNames": {"#mid": schema.MESSAGE_ID},
                    }
                },
                {
                    "Update": {
                        "TableName": threads_table,
                        "Key": {schema.THREAD_ID: {"S": thread_id}},
                        "UpdateExpression": "ADD #count :one SET #pair = :pair, #last = :mid",
                        "ExpressionAttributeNames": {
                            "#count": schema.THREAD_INTERRUPTION_COUNT,
                            "#pair": schema.THREAD_PAIR,
                            "#last": schema.THREAD_LAST_MESSAGE_ID,
                        },
                        "ExpressionAttributeValues": serialize_values({":one": 1, ":pair": pair, ":mid": message_id}),
                    }
                },
            ]
        )
    except ClientError as exc:
        reasons = exc.response.get("CancellationReasons") or []
        if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException" or not (
            reasons and reasons[0].get("Code") == "ConditionalCheckFailed"
        ):
            raise
        created = False  # a retry: recorded and counted by the call that created the row
    thread = to_plain(
        ddb.get_item(TableName=threads_table, Key={schema.THREAD_ID: {"S": thread_id}}, ConsistentRead=True).get("Item")
    )
    count = int((thread or {}).get(schema.THREAD_INTERRUPTION_COUNT, 0))
    delete_active_if_ours(active_table, pair, message_id)
    return {"recorded": True, "interruptionCount": count, "created": created}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(pair=event.get("pair"), message_id=event.get("messageId"))
    result = record_interruption(
        active_table=settings[schema.ENV_ACTIVE_JOBS_TABLE],
        interruptions_table=settings[schema.ENV_INTERRUPTIONS_TABLE],
        threads_table=settings[schema.ENV_THREADS_TABLE],
        event=event,
    )
    if result.pop("created"):
        add_count(metrics, "interruption_recorded")
    logger.info("Interruption recorded", extra=result)
    return result
