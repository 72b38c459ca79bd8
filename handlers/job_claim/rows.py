"""Rows shared by the handlers and the worker (not in schema.py yet: asked of its owner)."""

from __future__ import annotations

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.job_claim import schema

# The kind of an interruptions row: a PREEMPTED job, or one that timed out.
KIND = "kind"
KIND_PREEMPTED = "preempted"
KIND_TIMED_OUT = "timed_out"


def delete_active_if_ours(table: str, pair: str, message_id: str) -> bool:
    """Delete the active-job row of ``pair`` if it is ``message_id``'s; False when it was not."""
    try:
        client("dynamodb").delete_item(
            TableName=table,
            Key={schema.PAIR: {"S": pair}},
            ConditionExpression="#mid = :mid",
            ExpressionAttributeNames={"#mid": schema.MESSAGE_ID},
            ExpressionAttributeValues={":mid": {"S": message_id}},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return False
    return True
