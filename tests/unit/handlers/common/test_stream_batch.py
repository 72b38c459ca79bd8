"""OrderedStreamProcessor: per-key order, cross-key concurrency, stop-at-first-failure, identifiers."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch import EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import KinesisStreamRecord

from handlers.common.stream_batch import OrderedStreamProcessor

BARRIER_TIMEOUT = 10  # only reached when the behaviour under test is broken


def ddb_record(seq: int, key: str | None, payload: str = "") -> dict[str, Any]:
    keys = {} if key is None else {"task_id": {"S": key}}
    return {
        "eventID": f"id-{seq}",
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": keys,
            "NewImage": {**keys, "payload": {"S": payload or f"p{seq}"}},
            "SequenceNumber": f"{seq:021d}",
            "StreamViewType": "NEW_IMAGE",
        },
    }


def event_of(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def task_key(record: DynamoDBRecord) -> str:
    return record.dynamodb.keys["task_id"]  # type: ignore[union-attr]


def processor(max_concurrency: int = 4) -> OrderedStreamProcessor:
    return OrderedStreamProcessor(
        EventType.DynamoDBStreams, key=task_key, max_concurrency=max_concurrency, raise_on_entire_batch_failure=False
    )


def failed_ids(response: Any) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


def test_records_of_one_key_run_in_stream_order_and_never_overlap() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    active: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    lock = threading.Lock()

    def handle(record: DynamoDBRecord) -> None:
        key = task_key(record)
        with lock:
            active[key] += 1
            if active[key] > 1:
                overlaps.append(key)
        seen[key].append(str(record["dynamodb"]["SequenceNumber"]))
        with lock:
            active[key] -= 1

    records = [ddb_record(seq, key) for seq, key in enumerate(["a", "b", "a", "c", "b", "a", "c", "a"], start=1)]
    response = process_partial_response(event=event_of(*records), record_handler=handle, processor=processor())

    assert failed_ids(response) == []
    assert seen["a"] == [f"{n:021d}" for n in (1, 3, 6, 8)]
    assert seen["b"] == [f"{n:021d}" for n in (2, 5)]
    assert seen["c"] == [f"{n:021d}" for n in (4, 7)]
    assert overlaps == []


def test_different_keys_run_at_the_same_time() -> None:
    # Each key's first record waits until every key's first record has started: with
    # sequential processing the barrier can never fill and breaks (-> failures reported).
    keys = ["a", "b", "c"]
    barrier = threading.Barrier(len(keys), timeout=BARRIER_TIMEOUT)

    def handle(record: DynamoDBRecord) -> None:
        barrier.wait()

    records = [ddb_record(seq, key) for seq, key in enumerate(keys, start=1)]
    response = process_partial_response(event=event_of(*records), record_handler=handle, processor=processor(3))

    assert failed_ids(response) == []


def test_concurrency_is_bounded_by_max_concurrency() -> None:
    # Two workers for four keys: a barrier of three can never fill, so it breaks.
    barrier = threading.Barrier(3, timeout=0.5)
    broken: list[str] = []

    def handle(record: DynamoDBRecord) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            broken.append(task_key(record))

    records = [ddb_record(seq, key) for seq, key in enumerate(["a", "b", "c", "d"], start=1)]
    process_partial_response(event=event_of(*records), record_handler=handle, processor=processor(2))

    assert broken, "three records ran at once although max_concurrency is 2"


def test_after_a_keys_first_failure_its_later_records_are_not_run_but_reported() -> None:
    ran: list[str] = []
    lock = threading.Lock()

    def handle(record: DynamoDBRecord) -> None:
        payload = record.dynamodb.new_image["payload"]  # type: ignore[union-attr]
        with lock:
            ran.append(payload)
        if payload == "a-fails":
            raise RuntimeError("boom")

    records = [
        ddb_record(1, "a", "a-ok"),
        ddb_record(2, "b", "b-1"),
        ddb_record(3, "a", "a-fails"),
        ddb_record(4, "b", "b-2"),
        ddb_record(5, "a", "a-after-1"),
        ddb_record(6, "a", "a-after-2"),
    ]
    response = process_partial_response(event=event_of(*records), record_handler=handle, processor=processor())

    assert failed_ids(response) == [f"{n:021d}" for n in (3, 5, 6)]
    assert "a-after-1" not in ran and "a-after-2" not in ran
    assert {"a-ok", "a-fails", "b-1", "b-2"} <= set(ran)


def test_failure_identifiers_are_sequence_numbers_in_stream_order() -> None:
    def handle(record: DynamoDBRecord) -> None:
        raise ValueError("every record fails")

    records = [ddb_record(seq, key) for seq, key in [(7, "z"), (8, "y"), (9, "z")]]
    response = process_partial_response(event=event_of(*records), record_handler=handle, processor=processor())

    assert failed_ids(response) == [f"{n:021d}" for n in (7, 8, 9)]
    assert all(not ident.startswith("id-") for ident in failed_ids(response))  # not the eventID


def test_a_record_without_a_key_fails_alone() -> None:
    ran: list[str] = []

    def handle(record: DynamoDBRecord) -> None:
        ran.append(task_key(record))

    records = [ddb_record(1, "a"), ddb_record(2, None), ddb_record(3, "a"), ddb_record(4, "b")]
    proc = processor()
    response = process_partial_response(event=event_of(*records), record_handler=handle, processor=proc)

    assert failed_ids(response) == [f"{2:021d}"]
    assert sorted(ran) == ["a", "a", "b"]


def test_bad_key_reason_is_logged_with_the_sequence_number() -> None:
    messages: list[tuple[str, dict[str, Any]]] = []

    class RecordingLogger:
        def error(self, msg: str, extra: dict[str, Any]) -> None:
            messages.append((msg, extra))

        def warning(self, *args: Any, **kwargs: Any) -> None:
            pass

    proc = OrderedStreamProcessor(
        EventType.DynamoDBStreams, key=task_key, raise_on_entire_batch_failure=False, logger=RecordingLogger()
    )
    process_partial_response(event=event_of(ddb_record(5, None)), record_handler=lambda record: None, processor=proc)

    assert len(messages) == 1
    assert messages[0][1]["sequence_number"] == f"{5:021d}"
    assert "KeyError" in messages[0][1]["reason"]


def test_whole_batch_failing_raises_when_asked_to() -> None:
    proc = OrderedStreamProcessor(EventType.DynamoDBStreams, key=task_key)

    def handle(record: DynamoDBRecord) -> None:
        raise RuntimeError("down")

    with pytest.raises(Exception, match="All records failed"):
        process_partial_response(event=event_of(ddb_record(1, "a")), record_handler=handle, processor=proc)


def test_kinesis_failures_are_reported_by_kinesis_sequence_number() -> None:
    def kinesis_record(seq: str, partition: str) -> dict[str, Any]:
        return {
            "eventSource": "aws:kinesis",
            "eventID": f"shard:{seq}",
            "kinesis": {
                "partitionKey": partition,
                "sequenceNumber": seq,
                "data": "e30=",
                "kinesisSchemaVersion": "1.0",
            },
        }

    def handle(record: KinesisStreamRecord) -> None:
        if record.kinesis.sequence_number == "101":
            raise RuntimeError("boom")

    proc = OrderedStreamProcessor(
        EventType.KinesisDataStreams, key=lambda r: r.kinesis.partition_key, raise_on_entire_batch_failure=False
    )
    event = event_of(
        kinesis_record("100", "p"), kinesis_record("101", "p"), kinesis_record("102", "p"), kinesis_record("103", "q")
    )
    response = process_partial_response(event=event, record_handler=handle, processor=proc)

    assert failed_ids(response) == ["101", "102"]


def test_processor_is_reusable_across_invocations() -> None:
    def fail(record: DynamoDBRecord) -> None:
        raise RuntimeError("first invocation fails")

    def succeed(record: DynamoDBRecord) -> None:
        return None

    proc = processor()
    first = process_partial_response(event=event_of(ddb_record(1, "a")), record_handler=fail, processor=proc)
    second = process_partial_response(event=event_of(ddb_record(2, "a")), record_handler=succeed, processor=proc)

    assert failed_ids(first) == [f"{1:021d}"]
    assert failed_ids(second) == []


def test_only_stream_event_types_are_accepted() -> None:
    with pytest.raises(ValueError, match="stream events only"):
        OrderedStreamProcessor(EventType.SQS, key=task_key)
