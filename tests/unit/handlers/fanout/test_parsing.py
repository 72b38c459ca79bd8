"""Stream record -> TaskEvent, and every way a record can be malformed."""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from handlers.fanout.model import MalformedRecordError
from handlers.fanout.parsing import parse_record, task_id_of

GOOD_IMAGE: dict[str, Any] = {
    "task_id": {"S": "task-1"},
    "event_id": {"S": "evt-001"},
    "event_type": {"S": "task_completed"},
    "timestamp": {"S": "2026-11-23T10:00:00Z"},
    "metadata": {"M": {"pr_url": {"S": "https://github.com/o/r/pull/7"}, "attempt": {"N": "2"}}},
}


def record(image: dict[str, Any] | None = None, *, event_name: str = "INSERT", seq: str = "100") -> DynamoDBRecord:
    image = GOOD_IMAGE if image is None else image
    dynamodb: dict[str, Any] = {
        "Keys": {k: v for k, v in image.items() if k in ("task_id", "event_id")},
        "SequenceNumber": seq,
        "StreamViewType": "NEW_IMAGE",
    }
    if event_name != "REMOVE":
        dynamodb["NewImage"] = image
    return DynamoDBRecord({"eventID": "e1", "eventName": event_name, "dynamodb": dynamodb})


def with_fields(**changes: Any) -> dict[str, Any]:
    image = dict(GOOD_IMAGE)
    for name, value in changes.items():
        if value is None:
            image.pop(name, None)
        else:
            image[name] = value
    return image


def test_insert_record_becomes_a_task_event() -> None:
    event = parse_record(record(seq="000123"))

    assert event is not None
    assert (event.task_id, event.event_id, event.event_type, event.timestamp) == (
        "task-1",
        "evt-001",
        "task_completed",
        "2026-11-23T10:00:00Z",
    )
    assert event.metadata == {"pr_url": "https://github.com/o/r/pull/7", "attempt": 2}
    assert event.sequence_number == "000123"


def test_modify_record_is_parsed_like_an_insert() -> None:
    event = parse_record(record(event_name="MODIFY"))

    assert event is not None and event.event_type == "task_completed"


def test_remove_record_is_ignored_not_failed() -> None:
    assert parse_record(record(event_name="REMOVE")) is None


def test_metadata_keeps_scalars_only() -> None:
    metadata = {
        "M": {
            "text": {"S": "x"},
            "count": {"N": "3"},
            "ratio": {"N": "0.5"},
            "flag": {"BOOL": True},
            "nothing": {"NULL": True},
            "list": {"L": [{"S": "a"}]},
            "map": {"M": {"k": {"S": "v"}}},
            "set": {"SS": ["a"]},
            "blob": {"B": b"x"},
        }
    }
    event = parse_record(record(with_fields(metadata=metadata)))

    assert event is not None
    assert event.metadata == {"text": "x", "count": 3, "ratio": 0.5, "flag": True, "nothing": None}


def test_missing_metadata_is_an_empty_map() -> None:
    event = parse_record(record(with_fields(metadata=None)))

    assert event is not None and event.metadata == {}


def test_agent_milestone_pr_created_is_unwrapped() -> None:
    image = with_fields(
        event_type={"S": "agent_milestone"},
        metadata={"M": {"milestone": {"S": "pr_created"}, "pr_url": {"S": "https://github.com/o/r/pull/1"}}},
    )
    event = parse_record(record(image))

    assert event is not None
    assert event.event_type == "pr_created"
    assert event.metadata["milestone"] == "pr_created"


def test_agent_milestone_that_is_not_routable_stays_wrapped() -> None:
    image = with_fields(event_type={"S": "agent_milestone"}, metadata={"M": {"milestone": {"S": "tests_passed"}}})
    event = parse_record(record(image))

    assert event is not None and event.event_type == "agent_milestone"


def test_event_type_nobody_subscribes_to_still_parses() -> None:
    # Unknown to every channel is a routing question (acknowledged, not delivered), not a malformed record.
    event = parse_record(record(with_fields(event_type={"S": "brand_new_event"})))

    assert event is not None and event.event_type == "brand_new_event"


@pytest.mark.parametrize("field", ["task_id", "event_id", "event_type", "timestamp"])
def test_missing_required_field_is_malformed(field: str) -> None:
    with pytest.raises(MalformedRecordError, match=f"'{field}' is missing"):
        parse_record(record(with_fields(**{field: None})))


@pytest.mark.parametrize(
    ("field", "value", "type_name"),
    [
        ("task_id", {"N": "42"}, "number"),
        ("event_id", {"BOOL": True}, "bool"),
        ("event_type", {"L": [{"S": "task_completed"}]}, "list"),
        ("timestamp", {"N": "1700000000"}, "number"),
        ("timestamp", {"B": b"2026"}, "binary"),
    ],
)
def test_required_field_of_the_wrong_type_is_malformed(field: str, value: dict[str, Any], type_name: str) -> None:
    with pytest.raises(MalformedRecordError, match=f"'{field}' must be a string, got {type_name}"):
        parse_record(record(with_fields(**{field: value})))


def test_empty_required_field_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match="'event_type' is empty"):
        parse_record(record(with_fields(event_type={"S": "  "})))


def test_metadata_that_is_not_a_map_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match="'metadata' must be a map, got str"):
        parse_record(record(with_fields(metadata={"S": "oops"})))


def test_agent_milestone_without_a_milestone_name_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match=r"metadata\.milestone"):
        parse_record(record(with_fields(event_type={"S": "agent_milestone"}, metadata={"M": {}})))


def test_record_without_new_image_is_malformed() -> None:
    raw = {"eventID": "e1", "eventName": "INSERT", "dynamodb": {"Keys": {"task_id": {"S": "t"}}, "SequenceNumber": "1"}}

    with pytest.raises(MalformedRecordError, match="no NewImage"):
        parse_record(DynamoDBRecord(raw))


def test_unknown_event_name_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match="unknown eventName 'UPSERT'"):
        parse_record(record(event_name="UPSERT"))


def test_undecodable_dynamodb_json_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match="not valid DynamoDB JSON"):
        parse_record(record(with_fields(metadata={"XX": "what"})))


def test_record_without_dynamodb_section_is_malformed() -> None:
    with pytest.raises(MalformedRecordError, match="no 'dynamodb' section"):
        parse_record(DynamoDBRecord({"eventID": "e1", "eventName": "INSERT"}))


def test_task_id_key_comes_from_the_stream_keys() -> None:
    assert task_id_of(record()) == "task-1"
    assert task_id_of(record(event_name="REMOVE")) == "task-1"


@pytest.mark.parametrize("keys", [{}, {"task_id": {"N": "1"}}, {"task_id": {"S": ""}}])
def test_task_id_key_missing_or_not_a_string_is_malformed(keys: dict[str, Any]) -> None:
    raw = {"eventID": "e1", "eventName": "INSERT", "dynamodb": {"Keys": keys, "SequenceNumber": "1"}}

    with pytest.raises(MalformedRecordError, match="task_id"):
        task_id_of(DynamoDBRecord(raw))
