"""The active-job row's conditional writes, shared by the state machine's functions and the worker.

Every change after the worker's put is conditional on the row still being that message's (and,
for the worker, still its own container's), so a late writer never touches a newer job's row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.dynamo_items import serialize_values, to_plain
from handlers.job_claim import schema


def _ours(message_id: str, container_id: str | None) -> tuple[str, dict[str, str], dict[str, Any]]:
    condition = "#mid = :mid"
    names = {"#mid": schema.MESSAGE_ID}
    values: dict[str, Any] = {":mid": message_id}
    if container_id is not None:
        condition += " AND #cid = :me"
        names["#cid"] = schema.ACTIVE_CONTAINER_ID
        values[":me"] = container_id
    return condition, names, values


def delete_active_if_ours(table: str, pair: str, message_id: str, container_id: str | None = None) -> bool:
    """Delete ``pair``'s row if it is ``message_id``'s (and ``container_id``'s); False when it was not."""
    condition, names, values = _ours(message_id, container_id)
    try:
        client("dynamodb").delete_item(
            TableName=table,
            Key={schema.PAIR: {"S": pair}},
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=serialize_values(values),
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return False
    return True


def set_on_active_if_ours(
    table: str, pair: str, message_id: str, container_id: str, attributes: Mapping[str, Any]
) -> dict[str, Any] | None:
    """SET ``attributes`` on ``pair``'s row if it is this message's and container's.

    Returns the row as it is now (plain values), or None when it is not ours any more (removed by
    HandleTimeout or replaced).
    """
    condition, names, values = _ours(message_id, container_id)
    sets = []
    for index, (name, value) in enumerate(attributes.items()):
        names[f"#a{index}"] = name
        values[f":a{index}"] = value
        sets.append(f"#a{index} = :a{index}")
    try:
        response = client("dynamodb").update_item(
            TableName=table,
            Key={schema.PAIR: {"S": pair}},
            UpdateExpression="SET " + ", ".join(sets),
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=serialize_values(values),
            ReturnValues="ALL_NEW",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return None
    return to_plain(response.get("Attributes")) or {}
