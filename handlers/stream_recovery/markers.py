"""Pending-dispatch markers as the stream handler sees them: record parsing and eligibility.

Pure logic, no AWS calls. The stream on the markers table (view ``NEW_IMAGE``) delivers one
record per marker write; this module decides what each record is:

- ``INSERT``: work. Its NEW_IMAGE must carry ``tenant`` (S), ``taskId`` (S), ``owner`` (S),
  ``eventSequence`` (N, an integer in the u64 range) and ``recordedAtMicros`` (N, an integer in
  the i64 range; a negative value is clamped to 0). Anything else -- a missing attribute, a
  wrong DynamoDB type, a number that is not an integer or out of range, an empty string -- is a
  ``MalformedMarkerError`` naming the attribute and the reason; the handler reports the record
  as a batch item failure (it ends on the on-failure destination) with that log line.
- ``MODIFY`` (a marker refreshed by a worker) and ``REMOVE`` (consumed, or TTL): skipped, None.
  The next commit or the sweeper recovers anything that still needs work.
- any other or missing ``eventName``: malformed (a record we do not understand is never
  silently acknowledged).

The failure identifier is the record's ``dynamodb.SequenceNumber`` (``sequence_number``); a
record without one cannot be reported for retry and is only logged by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.stream_recovery import schema

INSERT = "INSERT"
SKIPPED_EVENT_NAMES = frozenset({"MODIFY", "REMOVE"})
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
_INTEGER = re.compile(r"-?[0-9]+")


class MalformedMarkerError(ValueError):
    """A stream record of the markers table that is not a well-formed marker."""

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"malformed pending-dispatch record: {attribute}: {reason}")
        self.attribute = attribute
        self.reason = reason


@dataclass(frozen=True)
class PendingDispatch:
    """One terminal event of one task whose webhooks must be delivered."""

    tenant: str
    task_id: str
    owner: str
    event_sequence: int
    recorded_at_micros: int  # >= 0

    @property
    def task_pk(self) -> str:
        return schema.task_pk(self.tenant, self.task_id)

    def item(self) -> dict[str, Any]:
        """The marker item (plain values) exactly as a commit writes it; the stream parses these names."""
        return {
            schema.PK: self.task_pk,
            schema.MARKER_SK: self.event_sequence,
            schema.MARKER_TENANT: self.tenant,
            schema.MARKER_TASK_ID: self.task_id,
            schema.MARKER_OWNER: self.owner,
            schema.MARKER_EVENT_SEQUENCE: self.event_sequence,
            schema.MARKER_RECORDED_AT_MICROS: self.recorded_at_micros,
            # TTL only cleans up (7 days), it never decides anything.
            schema.MARKER_TTL: self.recorded_at_micros // 1_000_000 + schema.MARKER_TTL_SECONDS,
            schema.MARKER_SWEEP_SHARD: schema.sweep_shard(self.tenant, self.task_id),
        }


def is_eligible(registered_after_event_sequence: int, event_sequence: int) -> bool:
    """A config receives an event iff it was registered before that event was committed.

    ``registered_after_event_sequence`` is the task's latest sequence when the config was
    created (set by compare-and-swap, so no commit can slip between the read and the write).
    """
    return registered_after_event_sequence < event_sequence


def sequence_number(record: Mapping[str, Any]) -> str | None:
    """The record's ``dynamodb.SequenceNumber`` (the batch item failure identifier), if any."""
    change = record.get("dynamodb")
    if not isinstance(change, Mapping):
        return None
    value = change.get("SequenceNumber")
    return value if isinstance(value, str) and value else None


def parse_record(record: Mapping[str, Any]) -> PendingDispatch | None:
    """The marker an ``INSERT`` record carries; None for MODIFY/REMOVE; else MalformedMarkerError."""
    if not isinstance(record, Mapping):
        raise MalformedMarkerError("record", f"expected a JSON object, got {type(record).__name__}")
    event_name = record.get("eventName")
    if event_name in SKIPPED_EVENT_NAMES:
        return None
    if event_name != INSERT:
        raise MalformedMarkerError("eventName", f"expected INSERT, MODIFY or REMOVE, got {event_name!r}")
    change = record.get("dynamodb")
    if not isinstance(change, Mapping):
        raise MalformedMarkerError("dynamodb", "missing or not an object")
    image = change.get("NewImage")
    if image is None:
        raise MalformedMarkerError("NewImage", "missing (the markers stream must have view type NEW_IMAGE)")
    return parse_new_image(image)


def parse_new_image(image: Any) -> PendingDispatch:
    """The marker in a DynamoDB-typed NEW_IMAGE (``{"tenant": {"S": "t"}, ...}``)."""
    if not isinstance(image, Mapping):
        raise MalformedMarkerError("NewImage", f"expected a map of attributes, got {type(image).__name__}")
    tenant = _string(image, schema.MARKER_TENANT)
    task_id = _string(image, schema.MARKER_TASK_ID)
    owner = _string(image, schema.MARKER_OWNER)
    event_sequence = _integer(image, schema.MARKER_EVENT_SEQUENCE, minimum=0, maximum=schema.U64_MAX, range_name="u64")
    recorded_at = _integer(image, schema.MARKER_RECORDED_AT_MICROS, minimum=I64_MIN, maximum=I64_MAX, range_name="i64")
    if schema.KEY_SEPARATOR in tenant:
        raise MalformedMarkerError(schema.MARKER_TENANT, f"must not contain {schema.KEY_SEPARATOR!r}")
    return PendingDispatch(
        tenant=tenant,
        task_id=task_id,
        owner=owner,
        event_sequence=event_sequence,
        recorded_at_micros=max(recorded_at, 0),
    )


def _typed(image: Mapping[str, Any], name: str, expected: str) -> Any:
    if name not in image:
        raise MalformedMarkerError(name, "missing")
    value = image[name]
    if not isinstance(value, Mapping) or len(value) != 1:
        raise MalformedMarkerError(name, f"expected a DynamoDB attribute value of type {expected}, got {value!r}")
    (actual,) = value.keys()
    if actual != expected:
        raise MalformedMarkerError(name, f"wrong type: expected {expected}, got {actual}")
    return value[actual]


def _string(image: Mapping[str, Any], name: str) -> str:
    value = _typed(image, name, "S")
    if not isinstance(value, str):
        raise MalformedMarkerError(name, f"S value is not a string: {value!r}")
    if not value:
        raise MalformedMarkerError(name, "empty string")
    return value


def _integer(image: Mapping[str, Any], name: str, *, minimum: int, maximum: int, range_name: str) -> int:
    raw = _typed(image, name, "N")
    if not isinstance(raw, str):
        raise MalformedMarkerError(name, f"N value is not a number string: {raw!r}")
    if not _INTEGER.fullmatch(raw):
        raise MalformedMarkerError(name, f"not an integer: {raw!r}")
    # 21 characters hold every u64 and i64 (and int() of a huge digit string would raise)
    value = int(raw) if len(raw) <= 21 else maximum + 1
    if not minimum <= value <= maximum:
        raise MalformedMarkerError(name, f"out of the {range_name} range: {raw}")
    return value


def task_key_of(record: Any) -> str:
    """The ordering key of a markers-table stream record: the task's ``pk`` from its Keys.

    ``record`` is Powertools' ``DynamoDBRecord`` (or its raw dict); Keys are present on every
    event name, so REMOVE records are ordered too. A record without them cannot be ordered.
    """
    raw = record.raw_event if hasattr(record, "raw_event") else record
    keys = raw.get("dynamodb", {}).get("Keys", {})
    value = keys.get(schema.PK, {}).get("S") if isinstance(keys, Mapping) else None
    if not isinstance(value, str) or not value:
        raise MalformedMarkerError("Keys.pk", "missing or not a string")
    return value
