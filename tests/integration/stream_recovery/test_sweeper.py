"""The StreamRecovery sweeper, called directly (moto's EventBridge Scheduler never fires)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from handlers.common.claims import ClaimLocation, ClaimStore
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import DeliveryPolicy
from handlers.stream_recovery.dispatch import DEADLINE_MARGIN_SECONDS, DispatchTables, Redispatcher
from handlers.stream_recovery.sweeper import STALE_MARKER_AGE_MICROS, Sweeper
from handlers.stream_recovery.writer import StreamRecoveryWriter
from tests.support.claim_tables import FakeClock
from tests.support.moto_server import MotoServer
from tests.support.stream_recovery_tables import StreamRecoveryTables, create_stream_recovery_tables
from tests.support.webhook_stub import Answer, WebhookStub

TENANT = "acme"
COMMIT_MICROS = 1_800_000_000_000_000
CLAIM_EXPIRY_MS = 120_000
# The receiver is plain HTTP on 127.0.0.1: the development flags a deployment never sets.
POLICY = DeliveryPolicy(retry_horizon_seconds=30, allow_http=True, allow_private_targets=True)


class World:
    def __init__(self, tables: StreamRecoveryTables, receiver: WebhookStub) -> None:
        self.tables = tables
        self.receiver = receiver
        self.ddb = boto3.client("dynamodb")
        self.micros = COMMIT_MICROS
        self.clock = FakeClock(COMMIT_MICROS // 1000)
        self.writer = StreamRecoveryWriter(
            tasks_table=tables.tasks,
            task_events_table=tables.task_events,
            push_configs_table=tables.push_configs,
            push_dispatch_enabled=True,
            pending_dispatches_table=tables.pending_dispatches,
            deliveries_table=tables.deliveries,
            clock_micros=lambda: self.micros,
            allow_http_urls=True,
        )

    def sweeper(self) -> Sweeper:
        dispatch_tables = DispatchTables(
            tasks=self.tables.tasks,
            task_events=self.tables.task_events,
            push_configs=self.tables.push_configs,
            pending_dispatches=self.tables.pending_dispatches,
            deliveries=self.tables.deliveries,
        )
        store = ClaimStore(clock=self.clock)
        redispatcher = Redispatcher(
            tables=dispatch_tables,
            policy=POLICY,
            claim_expiry_ms=CLAIM_EXPIRY_MS,
            claim_store=store,
            clock_micros=lambda: self.micros,
        )
        return Sweeper(
            redispatcher=redispatcher,
            pending_dispatches_table=self.tables.pending_dispatches,
            deliveries_table=self.tables.deliveries,
            claim_expiry_ms=CLAIM_EXPIRY_MS,
            claim_store=store,
            clock_micros=lambda: self.micros,
        )

    def terminal_task(self, task_id: str) -> str:
        self.writer.commit_status_update(tenant=TENANT, task_id=task_id, owner="o", event_sequence=1, state="working")
        config = self.writer.register_push_config(tenant=TENANT, task_id=task_id, url=self.receiver.url + "/hook")
        self.writer.commit_status_update(tenant=TENANT, task_id=task_id, owner="o", event_sequence=2, state="failed")
        return config.config_id

    def later(self, micros: int) -> None:
        self.micros += micros
        self.clock.advance(micros // 1000)

    def markers(self) -> list[dict[str, Any]]:
        return self.ddb.scan(TableName=self.tables.pending_dispatches, ConsistentRead=True)["Items"]


class TickingClock(FakeClock):
    def __call__(self) -> int:
        self.now_ms += 1
        return self.now_ms


@pytest.fixture
def world(aws: MotoServer) -> Iterator[World]:
    tables = create_stream_recovery_tables(boto3.client("dynamodb"))
    with WebhookStub() as receiver:
        yield World(tables, receiver)


def test_a_marker_the_stream_never_handled_is_delivered_once_it_is_stale(world: World) -> None:
    world.terminal_task("t-1")

    assert world.sweeper().sweep().staleMarkersFound == 0  # young: the stream is still on it
    world.later(STALE_MARKER_AGE_MICROS + 1)
    report = world.sweeper().sweep()

    assert (report.staleMarkersFound, report.staleMarkersRecovered, report.errors) == (1, 1, [])
    assert len(world.receiver.received()) == 1
    assert world.markers() == []


def test_sweeper_racing_a_second_worker_posts_once(world: World) -> None:
    world.terminal_task("t-1")
    world.later(STALE_MARKER_AGE_MICROS + 1)
    sweeper = world.sweeper()
    threads = [threading.Thread(target=sweeper.sweep) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(world.receiver.received()) == 1


def test_a_crashed_holders_claim_is_reclaimed_and_delivered(world: World) -> None:
    config_id = world.terminal_task("t-1")
    location = ClaimLocation(
        world.tables.deliveries,
        {schema.PK: {"S": schema.delivery_pk(TENANT, "t-1", 2)}, schema.DELIVERY_SK: {"S": config_id}},
    )
    crashed = ClaimStore(clock=world.clock).acquire(
        location,
        lease_ms=CLAIM_EXPIRY_MS,
        attributes={
            schema.DELIVERY_TENANT: TENANT,
            schema.DELIVERY_TASK_ID: "t-1",
            schema.DELIVERY_EVENT_SEQUENCE: 2,
            schema.DELIVERY_CLAIM_SHARD: "0",
        },
    )
    assert crashed.claim is not None
    world.later((CLAIM_EXPIRY_MS + 1) * 1000)  # the lease ran out; the marker is not stale yet
    world.ddb.update_item(  # keep the marker young, so only the claim index can find this
        TableName=world.tables.pending_dispatches,
        Key={schema.PK: {"S": schema.task_pk(TENANT, "t-1")}, schema.MARKER_SK: {"N": "2"}},
        UpdateExpression="SET recordedAtMicros = :now",
        ExpressionAttributeValues={":now": {"N": str(world.micros)}},
    )

    report = world.sweeper().sweep()

    assert (report.staleMarkersFound, report.reclaimableClaimsFound, report.reclaimableClaimsProcessed) == (0, 1, 1)
    assert len(world.receiver.received()) == 1
    assert world.markers() == []


def test_a_claim_whose_marker_is_gone_is_abandoned(world: World) -> None:
    location = ClaimLocation(
        world.tables.deliveries,
        {schema.PK: {"S": schema.delivery_pk(TENANT, "gone", 2)}, schema.DELIVERY_SK: {"S": "c-1"}},
    )
    ClaimStore(clock=world.clock).acquire(
        location,
        lease_ms=CLAIM_EXPIRY_MS,
        attributes={
            schema.DELIVERY_TENANT: TENANT,
            schema.DELIVERY_TASK_ID: "gone",
            schema.DELIVERY_EVENT_SEQUENCE: 2,
            schema.DELIVERY_CLAIM_SHARD: "3",
        },
    )
    world.later((CLAIM_EXPIRY_MS + 1) * 1000)

    report = world.sweeper().sweep()

    assert report.reclaimableClaimsProcessed == 1
    record = ClaimStore(clock=world.clock).read(location)
    assert record is not None and record.state == "abandoned"
    assert world.sweeper().sweep().reclaimableClaimsFound == 0  # terminal claims leave the index


def test_a_delivery_still_failing_is_tried_once_per_sweep_not_again_by_its_claims_pass(world: World) -> None:
    # 429 with a Retry-After past the horizon: the delivery ends "retry" and its lease is ended at
    # once; the same sweep's claims pass must not take it straight over and POST a second time.
    world.receiver.script(*[Answer(429, {"Retry-After": "120"})] * 4)
    world.clock = TickingClock(world.clock.now_ms)  # time moves during the sweep, as it does
    world.terminal_task("t-1")
    world.later(STALE_MARKER_AGE_MICROS + 1)

    report = world.sweeper().sweep()

    assert len(world.receiver.received()) == 1
    assert (report.staleMarkersRecovered, report.reclaimableClaimsProcessed) == (1, 0)
    assert report.reclaimableClaimsFound == 1  # found, and left for the next sweep


def test_a_sweep_with_no_time_left_starts_no_delivery_and_keeps_the_work(world: World) -> None:
    world.terminal_task("t-1")
    world.later(STALE_MARKER_AGE_MICROS + 1)

    # Less than one attempt (connect + read timeout) before the invocation ends.
    report = world.sweeper().sweep(deadline=time.monotonic() + POLICY.attempt_seconds)

    assert world.receiver.received() == [] and len(world.markers()) == 1
    assert report.staleMarkersRecovered == 0 and "left for the next sweep" in report.errors[0]
    assert world.sweeper().sweep().staleMarkersRecovered == 1 and len(world.receiver.received()) == 1


def test_a_delivery_is_cut_to_the_time_left_in_the_invocation(world: World) -> None:
    # A receiver that keeps failing: without a deadline the horizon (30 s) would be spent.
    world.receiver.script(*[Answer(503)] * 50)
    world.terminal_task("t-1")
    world.later(STALE_MARKER_AGE_MICROS + 1)
    budget = POLICY.attempt_seconds + DEADLINE_MARGIN_SECONDS + 2

    started = time.monotonic()
    world.sweeper().sweep(deadline=started + budget)

    assert time.monotonic() - started < budget
    assert len(world.markers()) == 1  # not delivered yet: still the sweeper's work
