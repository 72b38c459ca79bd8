"""Reading the task row and preparing its ``channel_metadata`` map for the dispatchers' markers.

Dispatchers store their guards (comment ids, email claims) under ``channel_metadata.<name>``.
A nested SET fails when the parent map does not exist, and one UpdateItem cannot create the
parent and set a child (overlapping paths), so ``ensure_channel_metadata`` creates an empty
map first -- conditionally, so it never overwrites markers another writer just stored.

Every write here is conditioned on ``attribute_exists(task_id)``: UpdateItem is an upsert,
and a marker must never conjure a phantom task row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from handlers.common.aws import client

CHANNEL_METADATA = "channel_metadata"
_deserializer = TypeDeserializer()


def deserialize_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def load_task(table_name: str, task_id: str) -> dict[str, Any] | None:
    """The task row, read consistently (a marker written by the previous record must be seen)."""
    response = client("dynamodb").get_item(TableName=table_name, Key={"task_id": {"S": task_id}}, ConsistentRead=True)
    item = response.get("Item")
    return deserialize_item(item) if item else None


def channel_metadata(task: Mapping[str, Any]) -> Mapping[str, Any]:
    value = task.get(CHANNEL_METADATA)
    return value if isinstance(value, Mapping) else {}


def ensure_channel_metadata(table_name: str, task: Mapping[str, Any]) -> None:
    """Make sure the row has a ``channel_metadata`` map (no-op when the snapshot shows one)."""
    if isinstance(task.get(CHANNEL_METADATA), Mapping):
        return
    try:
        client("dynamodb").update_item(
            TableName=table_name,
            Key={"task_id": {"S": str(task["task_id"])}},
            UpdateExpression="SET #cm = :empty",
            ConditionExpression="attribute_exists(task_id) AND attribute_not_exists(#cm)",
            ExpressionAttributeNames={"#cm": CHANNEL_METADATA},
            ExpressionAttributeValues={":empty": {"M": {}}},
        )
    except ClientError as exc:
        # Someone created the map since our snapshot (fine), or the row vanished: the marker
        # write that follows carries its own attribute_exists(task_id) and reports that case.
        if not is_conditional_check_failure(exc):
            raise


def is_conditional_check_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"
