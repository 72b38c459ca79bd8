"""The StreamRecovery stream handler: markers' stream (moto, GetRecords) -> webhooks on 127.0.0.1.

The application commits with the writer library; the handler is driven with the stream's real
records, as Lambda would deliver them; the receiver is a real HTTP server that checks the
Standard Webhooks signature.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest

from handlers.common.claims import ClaimLocation, ClaimStore
from handlers.common.config import ConfigurationError
from handlers.stream_recovery import schema
from handlers.stream_recovery.writer import (
    ENV_DELIVERIES_TABLE,
    ENV_PENDING_DISPATCHES_TABLE,
    ENV_PUSH_CONFIGS_TABLE,
    ENV_PUSH_DISPATCH,
    ENV_TASK_EVENTS_TABLE,
    ENV_TASKS_TABLE,
    PushConfig,
    StreamRecoveryWriter,
)
from tests.support.ddb_stream import StreamReader
from tests.support.fanout_stream import FakeLambdaContext, reported
from tests.support.moto_server import MotoServer
from tests.support.stream_recovery_tables import StreamRecoveryTables, create_stream_recovery_tables
from tests.support.webhook_stub import Answer, WebhookStub, verify

TENANT = "acme"


class World:
    def __init__(self, tables: StreamRecoveryTables, receiver: WebhookStub) -> None:
        self.tables = tables
        self.receiver = receiver
        self.ddb = boto3.client("dynamodb")
        arn = self.ddb.describe_table(TableName=tables.pending_dispatches)["Table"]["LatestStreamArn"]
        self.stream = StreamReader(boto3.client("dynamodbstreams"), arn)
        self.writer = StreamRecoveryWriter.from_env(allow_http_urls=True)
        self.handler = fresh_stream_handler()

    def register(self, task_id: str = "t-1") -> PushConfig:
        if not self.ddb.get_item(
            TableName=self.tables.tasks, Key={schema.PK: {"S": schema.task_pk(TENANT, task_id)}}, ConsistentRead=True
        ).get("Item"):
            self.commit(task_id, 1, "submitted")  # configs belong to an existing task
        return self.writer.register_push_config(tenant=TENANT, task_id=task_id, url=self.receiver.url + "/hook")

    def commit(self, task_id: str, sequence: int, state: str) -> None:
        self.writer.commit_status_update(
            tenant=TENANT, task_id=task_id, owner="alice", event_sequence=sequence, state=state
        )

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        return dict(self.handler.handler(event, FakeLambdaContext()))

    def markers(self) -> list[dict[str, Any]]:
        return self.ddb.scan(TableName=self.tables.pending_dispatches, ConsistentRead=True)["Items"]

    def delivery(self, task_id: str, sequence: int, config_id: str) -> dict[str, Any]:
        key = {
            schema.PK: {"S": schema.delivery_pk(TENANT, task_id, sequence)},
            schema.DELIVERY_SK: {"S": config_id},
        }
        return self.ddb.get_item(TableName=self.tables.deliveries, Key=key, ConsistentRead=True).get("Item", {})


def fresh_stream_handler() -> ModuleType:
    """Import the handler anew so its cold start reads the current environment."""
    sys.modules.pop("handlers.stream_recovery.stream_handler", None)
    return importlib.import_module("handlers.stream_recovery.stream_handler")


@pytest.fixture
def world(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    tables = create_stream_recovery_tables(boto3.client("dynamodb"))
    for name, value in {
        ENV_TASKS_TABLE: tables.tasks,
        ENV_TASK_EVENTS_TABLE: tables.task_events,
        ENV_PUSH_CONFIGS_TABLE: tables.push_configs,
        ENV_PENDING_DISPATCHES_TABLE: tables.pending_dispatches,
        ENV_DELIVERIES_TABLE: tables.deliveries,
        ENV_PUSH_DISPATCH: "true",
        # The receiver is plain HTTP on 127.0.0.1: the development flags a deployment never sets.
        "DELIVERY_ALLOW_HTTP": "true",
        "DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "DELIVERY_RETRY_HORIZON_SECONDS": "30",
        "DELIVERY_CLAIM_EXPIRY_SECONDS": "120",
        "FUNCTION_TIMEOUT_SECONDS": "60",
    }.items():
        monkeypatch.setenv(name, value)
    with WebhookStub() as receiver:
        yield World(tables, receiver)


def test_a_terminal_update_reaches_every_eligible_config_once_signed_and_the_marker_goes(world: World) -> None:
    first, second = world.register(), world.register()
    world.commit("t-1", 2, "working")  # not terminal: no marker, nothing pushed
    world.commit("t-1", 3, "completed")

    response = world.invoke(world.stream.next_batch())

    assert reported(response) == []
    received = world.receiver.received()
    assert len(received) == 2
    by_secret = {config.config_id: config.signing_secret for config in (first, second)}
    ids = set()
    for request in received:
        config_id = next(cid for cid, secret in by_secret.items() if verify(request, secret))
        ids.add(config_id)
        body = json.loads(request.body)
        assert body["taskId"] == "t-1" and body["eventSequence"] == 3 and body["status"]["state"] == "completed"
    assert ids == {first.config_id, second.config_id}
    assert world.markers() == []
    assert world.delivery("t-1", 3, first.config_id)["state"]["S"] == "succeeded"


def test_a_duplicate_insert_and_a_concurrent_second_worker_still_post_once_per_config(world: World) -> None:
    world.register()
    world.commit("t-1", 2, "failed")
    batch = world.stream.next_batch()

    # Two invocations with the same record at once (a duplicate delivery racing itself) ...
    responses: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: responses.append(world.invoke(batch))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # ... and the same record once more afterwards.
    responses.append(world.invoke(batch))

    assert all(reported(response) == [] for response in responses)
    assert len(world.receiver.received()) == 1


def test_a_config_registered_after_the_event_is_not_eligible(world: World) -> None:
    world.register()
    world.commit("t-1", 2, "completed")
    late = world.register()  # registered after event 2: its registered_after is 2

    world.invoke(world.stream.next_batch())

    assert len(world.receiver.received()) == 1
    assert world.delivery("t-1", 2, late.config_id) == {}


def test_a_receiver_that_keeps_failing_leaves_a_reclaimable_claim_and_the_marker(world: World) -> None:
    config = world.register()
    world.commit("t-1", 2, "completed")
    world.receiver.script(*[Answer(503)] * 50)

    response = world.invoke(world.stream.next_batch())

    assert reported(response) == []  # one dead receiver never holds back the stream
    assert len(world.markers()) == 1  # the sweeper comes back for it
    claim = world.delivery("t-1", 2, config.config_id)
    assert claim["state"]["S"] == "pending"
    assert int(claim["deliveryAttemptCount"]["N"]) == len(world.receiver.received()) >= 2


def test_a_stale_holder_stops_before_posting(world: World) -> None:
    config = world.register()
    world.commit("t-1", 2, "completed")
    location = ClaimLocation(
        world.tables.deliveries,
        {
            schema.PK: {"S": schema.delivery_pk(TENANT, "t-1", 2)},
            schema.DELIVERY_SK: {"S": config.config_id},
        },
    )
    # Another worker holds the delivery claim right now (its lease is live).
    assert ClaimStore().acquire(location, lease_ms=120_000).claim is not None

    response = world.invoke(world.stream.next_batch())

    assert reported(response) == []
    assert world.receiver.received() == []
    assert len(world.markers()) == 1  # not every config is terminal: the marker stays


def test_a_deleted_task_deletes_its_marker(world: World) -> None:
    world.register()
    world.commit("t-1", 2, "completed")
    world.ddb.delete_item(TableName=world.tables.tasks, Key={schema.PK: {"S": schema.task_pk(TENANT, "t-1")}})

    response = world.invoke(world.stream.next_batch())

    assert reported(response) == []
    assert world.markers() == []
    assert world.receiver.received() == []


def test_a_malformed_marker_record_fails_by_its_sequence_number(world: World) -> None:
    world.ddb.put_item(
        TableName=world.tables.pending_dispatches,
        Item={schema.PK: {"S": "acme#t-9"}, schema.MARKER_SK: {"N": "1"}, "tenant": {"S": TENANT}},
    )
    batch = world.stream.next_batch()

    response = world.invoke(batch)

    assert reported(response) == [batch["Records"][0]["dynamodb"]["SequenceNumber"]]


def test_timing_rules_fail_the_cold_start(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_CLAIM_EXPIRY_SECONDS", "20")  # shorter than the 30 s horizon
    with pytest.raises(ConfigurationError, match="claim expiry"):
        fresh_stream_handler()


def test_two_dead_receivers_cannot_push_the_invocation_past_its_timeout(world: World) -> None:
    # Two configs, both failing: 2 x the 30 s horizon would exceed a 26 s invocation; the second
    # delivery is cut to what is left (or not started), the batch ends in time and loses nothing.
    configs = [world.register(), world.register()]
    world.commit("t-1", 2, "completed")
    world.receiver.script(*[Answer(503)] * 200)
    started = time.monotonic()

    response = dict(world.handler.handler(world.stream.next_batch(), FakeLambdaContext(timeout_ms=26_000)))

    assert time.monotonic() - started < 26
    assert reported(response) == []
    assert len(world.markers()) == 1  # the sweeper finishes what this invocation could not
    states = [world.delivery("t-1", 2, c.config_id).get("state", {}).get("S") for c in configs]
    assert "succeeded" not in states
