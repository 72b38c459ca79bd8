"""Task-events stream record -> ``TaskEvent``.

Accepted: INSERT and MODIFY records whose new image carries ``task_id``, ``event_id``,
``event_type`` and ``timestamp`` as non-empty strings. A MODIFY is treated like an INSERT
(the producer rewrote the event; every dispatcher is idempotent per event, so at worst the
channel sees the same notification deduplicated). ``metadata`` is optional; when present it
must be a map, and only its scalar values (string, number, boolean, null) are kept -- lists,
maps, sets and binaries are dropped, because no renderer can show them and a channel payload
must never carry an unbounded structure.

REMOVE records are *ignored*, not failures: deleting an event (TTL expiry, cleanup) is not a
notification, and reporting it would send harmless records to the DLQ. ``parse_record``
returns ``None`` for them. (The event source mapping's filter normally keeps them out; this
is the second line.)

``agent_milestone`` is a wrapper: the milestone's name lives in ``metadata.milestone``. For
routable milestones (only ``pr_created``) the event is unwrapped, i.e. its ``event_type``
becomes the milestone name so channels subscribe to ``pr_created`` regardless of how it was
emitted; ``metadata.milestone`` stays in the metadata. Other milestones keep the type
``agent_milestone`` (no channel subscribes to it by default). A wrapper without a string
``metadata.milestone`` is malformed.

Anything else raises ``MalformedRecordError`` with the reason: the record is reported as a
batch item failure and ends in the on-failure destination, named in the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
    DynamoDBRecordEventName,
)

from handlers.fanout.model import MalformedRecordError, Scalar, TaskEvent

MILESTONE_WRAPPER = "agent_milestone"
MILESTONE_FIELD = "milestone"
ROUTABLE_MILESTONES = frozenset({"pr_created"})
REQUIRED_STRING_FIELDS = ("task_id", "event_id", "event_type", "timestamp")


def task_id_of(record: DynamoDBRecord) -> str:
    """The ordering key of a task-events record (from the stream keys, present for every event name)."""
    stream = record.dynamodb
    if stream is None:
        raise MalformedRecordError("record has no 'dynamodb' section")
    try:
        task_id = stream.keys.get("task_id")
    except (TypeError, AttributeError, IndexError, KeyError, ArithmeticError) as exc:
        raise MalformedRecordError(f"record keys cannot be read: {exc}") from exc
    if not isinstance(task_id, str) or not task_id:
        raise MalformedRecordError(f"record keys have no string task_id (got {task_id!r})")
    return task_id


def parse_record(record: DynamoDBRecord) -> TaskEvent | None:
    """Parse one stream record; ``None`` for REMOVE records (ignored on purpose)."""
    event_name = _event_name(record)
    if event_name is DynamoDBRecordEventName.REMOVE:
        return None
    stream = record.dynamodb
    if stream is None:
        raise MalformedRecordError("record has no 'dynamodb' section")
    sequence_number = stream.sequence_number or ""
    image = _new_image(record)
    if not image:
        raise MalformedRecordError(
            f"{event_name.name} record has no NewImage (the stream view type must include new images)"
        )

    fields: dict[str, str] = {}
    for name in REQUIRED_STRING_FIELDS:
        value = image.get(name)
        if value is None:
            raise MalformedRecordError(f"field {name!r} is missing")
        if not isinstance(value, str):
            raise MalformedRecordError(f"field {name!r} must be a string, got {_type_name(value)}")
        if not value.strip():
            raise MalformedRecordError(f"field {name!r} is empty")
        fields[name] = value

    metadata = _scalar_metadata(image.get("metadata"))
    event_type = _effective_event_type(fields["event_type"], metadata)
    return TaskEvent(
        task_id=fields["task_id"],
        event_id=fields["event_id"],
        event_type=event_type,
        timestamp=fields["timestamp"],
        metadata=metadata,
        sequence_number=sequence_number,
    )


def _event_name(record: DynamoDBRecord) -> DynamoDBRecordEventName:
    try:
        event_name = record.event_name
    except KeyError as exc:
        raise MalformedRecordError(f"unknown eventName {record.get('eventName')!r}") from exc
    if event_name is None:
        raise MalformedRecordError("record has no eventName")
    return event_name


def _new_image(record: DynamoDBRecord) -> dict[str, Any]:
    try:
        return record.dynamodb.new_image  # type: ignore[union-attr]
    except Exception as exc:  # the image is attacker-shaped data: any decoding error is a malformed record
        raise MalformedRecordError(f"NewImage is not valid DynamoDB JSON: {type(exc).__name__}: {exc}") from exc


def _scalar_metadata(raw: object) -> dict[str, Scalar]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise MalformedRecordError(f"field 'metadata' must be a map, got {_type_name(raw)}")
    kept: dict[str, Scalar] = {}
    for key, value in raw.items():
        scalar = _as_scalar(value)
        if scalar is not _NOT_SCALAR:
            kept[str(key)] = scalar  # type: ignore[assignment]
    return kept


_NOT_SCALAR = object()


def _as_scalar(value: object) -> object:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (int, float)):
        return value
    return _NOT_SCALAR


def _effective_event_type(event_type: str, metadata: Mapping[str, Scalar]) -> str:
    if event_type != MILESTONE_WRAPPER:
        return event_type
    milestone = metadata.get(MILESTONE_FIELD)
    if not isinstance(milestone, str) or not milestone:
        raise MalformedRecordError(f"{MILESTONE_WRAPPER} event has no string metadata.{MILESTONE_FIELD}")
    return milestone if milestone in ROUTABLE_MILESTONES else event_type


def _type_name(value: object) -> str:
    if isinstance(value, Decimal):
        return "number"
    if isinstance(value, bytes):
        return "binary"
    return type(value).__name__
