"""The interrupt channel: one SNS topic, each message addressed by its ``container_id`` attribute.

A worker subscribes its own queue with a filter policy ``{"container_id": [<its id>]}``. The
reference worker also watches ``interrupt_requested_by`` on its active-job row (the durable
signal, set before the publish), so a lost notification delays nothing beyond one heartbeat.
"""

from __future__ import annotations

import json
from typing import Any

from handlers.common.aws import client

CONTAINER_ID_ATTRIBUTE = "container_id"


def send_interrupt(
    *, topic_arn: str, pair: str, container_id: str, interrupted_message_id: str, by_message_id: str
) -> str:
    """Publish the interrupt; returns the SNS message id. At-least-once (a retry publishes again;
    the worker stops once whatever the count)."""
    body = {"pair": pair, "interruptedMessageId": interrupted_message_id, "byMessageId": by_message_id}
    response: dict[str, Any] = client("sns").publish(
        TopicArn=topic_arn,
        Message=json.dumps(body),
        MessageAttributes={CONTAINER_ID_ATTRIBUTE: {"DataType": "String", "StringValue": container_id}},
    )
    return str(response["MessageId"])
