"""Parsing the markers table's stream records exactly as the spec says, and the eligibility rule."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.stream_recovery import schema
from handlers.stream_recovery.markers import (
    MalformedMarkerError,
    PendingDispatch,
    is_eligible,
    parse_new_image,
    parse_record,
    sequence_number,
)

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


def image(**overrides: Any) -> dict[str, Any]:
    """A well-formed NEW_IMAGE as the writer writes it; an override of None drops the attribute."""
    base: dict[str, Any] = {
        "pk": {"S": "acme#task-1"},
        "sk": {"N": "7"},
        "tenant": {"S": "acme"},
        "taskId": {"S": "task-1"},
        "owner": {"S": "alice"},
        "eventSequence": {"N": "7"},
        "recordedAtMicros": {"N": "1800000000000000"},
        "ttl": {"N": "1800604800"},
        "sweepShard": {"S": "3"},
    }
    for name, value in overrides.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def record(event_name: Any = "INSERT", new_image: Any = None, *, with_image: bool = True) -> dict[str, Any]:
    change: dict[str, Any] = {"Keys": {"pk": {"S": "acme#task-1"}, "sk": {"N": "7"}}, "SequenceNumber": "1000"}
    if with_image:
        change["NewImage"] = image() if new_image is None else new_image
    result: dict[str, Any] = {"eventID": "e-1", "eventSource": "aws:dynamodb", "dynamodb": change}
    if event_name is not None:
        result["eventName"] = event_name
    return result


def malformed(image_value: Any) -> MalformedMarkerError:
    with pytest.raises(MalformedMarkerError) as caught:
        parse_new_image(image_value)
    return caught.value


# -- well-formed ------------------------------------------------------------------------------


def test_an_insert_is_parsed_into_a_pending_dispatch() -> None:
    assert parse_record(record()) == PendingDispatch(
        tenant="acme", task_id="task-1", owner="alice", event_sequence=7, recorded_at_micros=1_800_000_000_000_000
    )


def test_the_attribute_names_are_the_schema_names() -> None:
    names = {
        schema.MARKER_TENANT,
        schema.MARKER_TASK_ID,
        schema.MARKER_OWNER,
        schema.MARKER_EVENT_SEQUENCE,
        schema.MARKER_RECORDED_AT_MICROS,
    }
    assert names == {"tenant", "taskId", "owner", "eventSequence", "recordedAtMicros"}


def test_the_task_key_is_tenant_hash_task_id() -> None:
    pending = parse_new_image(image())
    assert pending.task_pk == "acme#task-1" == schema.task_pk("acme", "task-1")


@pytest.mark.parametrize("event_name", ["MODIFY", "REMOVE"])
def test_modify_and_remove_are_skipped(event_name: str) -> None:
    assert parse_record(record(event_name)) is None
    # even without an image: a REMOVE of a NEW_IMAGE stream carries none
    assert parse_record(record(event_name, with_image=False)) is None


def test_the_event_sequence_spans_the_whole_u64_range() -> None:
    assert parse_new_image(image(eventSequence={"N": "0"})).event_sequence == 0
    assert parse_new_image(image(eventSequence={"N": str(U64_MAX)})).event_sequence == U64_MAX


def test_a_negative_recorded_at_is_clamped_to_zero() -> None:
    assert parse_new_image(image(recordedAtMicros={"N": "-5"})).recorded_at_micros == 0
    assert parse_new_image(image(recordedAtMicros={"N": str(-(2**63))})).recorded_at_micros == 0
    assert parse_new_image(image(recordedAtMicros={"N": str(I64_MAX)})).recorded_at_micros == I64_MAX


def test_extra_attributes_are_ignored() -> None:
    assert parse_new_image(image(somethingElse={"BOOL": True})).event_sequence == 7


def test_sequence_number_is_the_failure_identifier() -> None:
    assert sequence_number(record()) == "1000"
    assert sequence_number({"eventName": "INSERT", "dynamodb": {}}) is None
    assert sequence_number({"eventName": "INSERT"}) is None
    assert sequence_number({"dynamodb": {"SequenceNumber": ""}}) is None


# -- malformed records --------------------------------------------------------------------------


def test_an_insert_without_new_image_names_the_stream_view() -> None:
    with pytest.raises(MalformedMarkerError) as caught:
        parse_record(record(with_image=False))
    assert caught.value.attribute == "NewImage" and "NEW_IMAGE" in caught.value.reason


def test_an_unknown_event_name_is_malformed_not_skipped() -> None:
    with pytest.raises(MalformedMarkerError) as caught:
        parse_record(record("UPSERT"))
    assert caught.value.attribute == "eventName" and "'UPSERT'" in caught.value.reason


def test_a_missing_event_name_is_malformed() -> None:
    with pytest.raises(MalformedMarkerError) as caught:
        parse_record(record(None))
    assert caught.value.attribute == "eventName"


def test_a_record_without_dynamodb_section_is_malformed() -> None:
    with pytest.raises(MalformedMarkerError) as caught:
        parse_record({"eventName": "INSERT"})
    assert caught.value.attribute == "dynamodb"


def test_a_record_that_is_not_an_object_is_malformed() -> None:
    with pytest.raises(MalformedMarkerError) as caught:
        parse_record(["INSERT"])  # type: ignore[arg-type]
    assert caught.value.attribute == "record"


def test_a_new_image_that_is_not_a_map_is_malformed() -> None:
    error = malformed("tenant=acme")
    assert error.attribute == "NewImage" and "str" in error.reason


# -- malformed attributes: one case each ----------------------------------------------------------


@pytest.mark.parametrize("name", ["tenant", "taskId", "owner", "eventSequence", "recordedAtMicros"])
def test_a_missing_attribute_is_named(name: str) -> None:
    error = malformed(image(**{name: None}))
    assert error.attribute == name and error.reason == "missing"
    assert str(error) == f"malformed pending-dispatch record: {name}: missing"


@pytest.mark.parametrize(
    ("name", "value", "expected", "actual"),
    [
        ("tenant", {"N": "1"}, "S", "N"),
        ("taskId", {"B": "dGFzaw=="}, "S", "B"),
        ("owner", {"SS": ["alice"]}, "S", "SS"),
        ("eventSequence", {"S": "7"}, "N", "S"),
        ("recordedAtMicros", {"S": "1800000000000000"}, "N", "S"),
        ("eventSequence", {"NULL": True}, "N", "NULL"),
    ],
)
def test_a_wrong_type_names_the_expected_and_actual_type(name: str, value: Any, expected: str, actual: str) -> None:
    error = malformed(image(**{name: value}))
    assert error.attribute == name
    assert error.reason == f"wrong type: expected {expected}, got {actual}"


@pytest.mark.parametrize("value", ["alice", 7, {}, {"S": "a", "N": "1"}])
def test_an_attribute_value_that_is_not_one_typed_value_is_malformed(value: Any) -> None:
    error = malformed(image(owner=value))
    assert error.attribute == "owner" and "expected a DynamoDB attribute value of type S" in error.reason


def test_a_string_value_that_is_not_a_string_is_malformed() -> None:
    error = malformed(image(taskId={"S": 42}))
    assert error.attribute == "taskId" and "not a string" in error.reason


@pytest.mark.parametrize("name", ["tenant", "taskId", "owner"])
def test_an_empty_string_is_malformed(name: str) -> None:
    error = malformed(image(**{name: {"S": ""}}))
    assert error.attribute == name and error.reason == "empty string"


def test_a_tenant_with_the_key_separator_is_malformed() -> None:
    error = malformed(image(tenant={"S": "ac#me"}))
    assert error.attribute == "tenant" and "'#'" in error.reason


@pytest.mark.parametrize("raw", ["1.5", "7.0", "1e3", "abc", "", " 7", "+7", "0x10", "NaN"])
def test_an_event_sequence_that_is_not_an_integer_is_malformed(raw: str) -> None:
    error = malformed(image(eventSequence={"N": raw}))
    assert error.attribute == "eventSequence" and error.reason == f"not an integer: {raw!r}"


@pytest.mark.parametrize("raw", ["-1", str(U64_MAX + 1), "9" * 5000])
def test_an_event_sequence_outside_u64_is_malformed(raw: str) -> None:
    error = malformed(image(eventSequence={"N": raw}))
    assert error.attribute == "eventSequence" and error.reason.startswith("out of the u64 range")


def test_an_event_sequence_number_value_that_is_not_a_string_is_malformed() -> None:
    error = malformed(image(eventSequence={"N": 7}))
    assert error.attribute == "eventSequence" and "not a number string" in error.reason


@pytest.mark.parametrize("raw", ["12.5", "1e15", "now"])
def test_a_recorded_at_that_is_not_an_integer_is_malformed(raw: str) -> None:
    error = malformed(image(recordedAtMicros={"N": raw}))
    assert error.attribute == "recordedAtMicros" and error.reason == f"not an integer: {raw!r}"


@pytest.mark.parametrize("raw", [str(I64_MAX + 1), str(-(2**63) - 1)])
def test_a_recorded_at_outside_i64_is_malformed(raw: str) -> None:
    error = malformed(image(recordedAtMicros={"N": raw}))
    assert error.attribute == "recordedAtMicros" and error.reason.startswith("out of the i64 range")


def test_the_first_problem_in_attribute_order_is_reported() -> None:
    error = malformed(image(tenant=None, eventSequence={"S": "x"}))
    assert error.attribute == "tenant"


# -- eligibility --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registered_after", "sequence", "eligible"),
    [(0, 1, True), (4, 5, True), (5, 5, False), (6, 5, False), (0, 0, False), (U64_MAX - 1, U64_MAX, True)],
)
def test_a_config_is_eligible_iff_registered_before_the_event(
    registered_after: int, sequence: int, eligible: bool
) -> None:
    assert is_eligible(registered_after, sequence) is eligible
