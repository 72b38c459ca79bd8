"""``python -m handlers.stream_recovery``: show, sweep and redeliver against moto and a local HTTPS receiver.

``main(argv)`` runs in-process (output captured); the receiver is a real HTTPS server with a
certificate of the test CA for ``localhost``, reached through the SSRF guard (only the
private-target development flag is set: plain http stays refused).
"""

from __future__ import annotations

import functools
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from handlers.common.claims import ClaimLocation, ClaimStore
from handlers.stream_recovery import schema
from handlers.stream_recovery.cli import PROG, main
from handlers.stream_recovery.delivery import DeliveryKey, deliver
from handlers.stream_recovery.dispatch import Redispatcher
from handlers.stream_recovery.markers import PendingDispatch
from handlers.stream_recovery.settings import load_settings
from handlers.stream_recovery.sweeper import STALE_MARKER_AGE_MICROS
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
from tests.support.claim_tables import FakeClock
from tests.support.local_ca import LocalCA
from tests.support.moto_server import MotoServer
from tests.support.stream_recovery_tables import StreamRecoveryTables, create_stream_recovery_tables
from tests.support.webhook_stub import Answer, WebhookStub, verify

TENANT = "acme"
TASK = "t-1"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind]


class World:
    def __init__(self, tables: StreamRecoveryTables, receiver: WebhookStub, ca: LocalCA) -> None:
        self.tables = tables
        self.receiver = receiver
        self.ca = ca
        self.ddb = boto3.client("dynamodb")
        self.env = {
            ENV_TASKS_TABLE: tables.tasks,
            ENV_TASK_EVENTS_TABLE: tables.task_events,
            ENV_PUSH_CONFIGS_TABLE: tables.push_configs,
            ENV_PENDING_DISPATCHES_TABLE: tables.pending_dispatches,
            ENV_DELIVERIES_TABLE: tables.deliveries,
            ENV_PUSH_DISPATCH: "true",
            # https only; the receiver is on 127.0.0.1, which needs the private-target flag
            "DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
            "DELIVERY_RETRY_HORIZON_SECONDS": "30",
            "DELIVERY_MAX_ATTEMPTS": "3",
            "DELIVERY_CLAIM_EXPIRY_SECONDS": "120",
            "FUNCTION_TIMEOUT_SECONDS": "60",
        }
        self.micros_offset = 0
        self.writer = StreamRecoveryWriter(
            tasks_table=tables.tasks,
            task_events_table=tables.task_events,
            push_configs_table=tables.push_configs,
            push_dispatch_enabled=True,
            pending_dispatches_table=tables.pending_dispatches,
            deliveries_table=tables.deliveries,
            clock_micros=lambda: time.time_ns() // 1000 + self.micros_offset,
        )

    @property
    def url(self) -> str:
        return f"https://localhost:{self.receiver.port}/hook"

    def cli(self, *argv: str, env: dict[str, str] | None = None) -> Run:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            list(argv),
            environ=self.env if env is None else env,
            stdout=out,
            stderr=err,
            ssl_context=self.ca.client_context(),
        )
        return Run(code, out.getvalue(), err.getvalue())

    def terminal_task(self, configs: int = 1, **register: Any) -> list[PushConfig]:
        """A task with ``configs`` push configs and a terminal event 2 (its marker written)."""
        self.writer.commit_status_update(tenant=TENANT, task_id=TASK, owner="alice", event_sequence=1, state="working")
        registered = [
            self.writer.register_push_config(tenant=TENANT, task_id=TASK, url=self.url, config_id=f"c-{n}", **register)
            for n in range(1, configs + 1)
        ]
        self.writer.commit_status_update(tenant=TENANT, task_id=TASK, owner="alice", event_sequence=2, state="failed")
        return registered

    def dispatch(self, sequence: int = 2) -> None:
        """What the stream handler does with the marker's INSERT."""
        settings = load_settings(self.env)
        Redispatcher(
            tables=settings.tables,
            policy=settings.policy,
            claim_expiry_ms=settings.claim_expiry_seconds * 1000,
            deliver_fn=functools.partial(deliver, ssl_context=self.ca.client_context()),
        ).redispatch(PendingDispatch(TENANT, TASK, "alice", sequence, time.time_ns() // 1000))

    def claim(self, config_id: str, sequence: int = 2) -> dict[str, Any]:
        location = ClaimLocation(
            self.tables.deliveries,
            {
                schema.PK: {"S": schema.delivery_pk(TENANT, TASK, sequence)},
                schema.DELIVERY_SK: {"S": config_id},
            },
        )
        record = ClaimStore().read(location)
        assert record is not None
        return dict(record.attributes)

    def markers(self) -> list[dict[str, Any]]:
        return self.ddb.scan(TableName=self.tables.pending_dispatches, ConsistentRead=True)["Items"]


@pytest.fixture(scope="module")
def ca() -> Iterator[LocalCA]:
    authority = LocalCA()
    yield authority
    authority.close()


@pytest.fixture
def world(aws: MotoServer, ca: LocalCA) -> Iterator[World]:
    tables = create_stream_recovery_tables(boto3.client("dynamodb"))
    with WebhookStub(tls=ca.server_context("localhost")) as receiver:
        yield World(tables, receiver, ca)


def error_of(run: Run) -> str:
    assert run.code == 1, run
    assert run.stderr.startswith(f"{PROG}: error: "), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    return run.stderr


# -- show ---------------------------------------------------------------------------------------


def test_show_prints_task_configs_marker_and_never_a_secret(world: World) -> None:
    [config] = world.terminal_task(auth_token="tok-SECRET-123", notification_token="nt-SECRET-456")
    world.writer.register_push_config(
        tenant=TENANT, task_id=TASK, url=f"https://localhost:{world.receiver.port}/h?key=SECRET-789"
    )

    run = world.cli("show", "--tenant", TENANT, "--task-id", TASK)

    assert run.code == 0, run.stderr
    for secret in (config.signing_secret, "SECRET", "whsec_"):
        assert secret not in run.stdout
    [task] = run.of("task")
    assert (task["state"], task["latestEventSequence"], task["terminal"], task["pushConfigCount"]) == (
        "failed",
        2,
        True,
        2,
    )
    configs = {line["configId"]: line for line in run.of("push_config")}
    assert configs["c-1"]["signingSecret"] == "<redacted>"
    assert configs["c-1"]["authToken"] == "<redacted>" and configs["c-1"]["notificationToken"] == "<redacted>"
    assert configs["c-1"]["url"] == world.url and configs["c-1"]["registeredAfterEventSequence"] == 1
    [other] = [line for cid, line in configs.items() if cid != "c-1"]
    assert other["url"] == f"https://localhost:{world.receiver.port}/h?<redacted>"
    assert other["authToken"] is None
    [marker] = run.of("marker")
    assert marker["eventSequence"] == 2 and marker["stale"] is False
    assert [e["eventSequence"] for e in run.of("event")] == [2]
    assert run.of("claim") == []  # the stream has not run yet


def test_show_lists_each_delivery_claim(world: World) -> None:
    world.terminal_task(configs=2)
    world.receiver.script(Answer(204), Answer(400))  # c-1 succeeds, c-2 is refused for good
    world.dispatch()

    run = world.cli("show", "--tenant", TENANT, "--task-id", TASK)

    assert run.code == 0, run.stderr
    claims = {line["configId"]: line for line in run.of("claim")}
    assert {cid: (c["state"], c["attemptCount"], c["lastStatus"], c["reason"]) for cid, c in claims.items()} == {
        "c-1": ("succeeded", 1, 204, "ok"),
        "c-2": ("gave_up", 1, 400, "non_retryable_status"),
    }
    assert claims["c-1"]["leaseUntilMs"] is None and claims["c-1"]["generation"] == 1
    assert run.of("marker") == []  # every config terminal: the marker is gone


def test_show_an_unknown_task_fails(world: World) -> None:
    run = world.cli("show", "--tenant", TENANT, "--task-id", "nope")
    assert "TASK_NOT_FOUND" in error_of(run)
    assert run.stdout == ""


# -- sweep --------------------------------------------------------------------------------------


def test_sweep_delivers_a_stale_marker_and_prints_the_report(world: World) -> None:
    world.micros_offset = -(STALE_MARKER_AGE_MICROS + 60_000_000)  # committed 11 minutes ago
    [config] = world.terminal_task()

    run = world.cli("sweep")

    assert run.code == 0, run.stderr
    [report] = run.lines
    assert report == {
        "kind": "sweep_report",
        "staleMarkersFound": 1,
        "staleMarkersRecovered": 1,
        "staleMarkersTransientErrors": 0,
        "reclaimableClaimsFound": 0,
        "reclaimableClaimsProcessed": 0,
        "errors": [],
    }
    [request] = world.receiver.received()
    assert verify(request, config.signing_secret)
    assert world.markers() == []
    assert world.cli("sweep").lines[0]["staleMarkersFound"] == 0


def test_sweep_with_a_broken_configuration_fails_in_one_line(world: World) -> None:
    env = {k: v for k, v in world.env.items() if k != ENV_DELIVERIES_TABLE}
    run = world.cli("sweep", env=env)
    assert ENV_DELIVERIES_TABLE in error_of(run)


# -- redeliver ----------------------------------------------------------------------------------


def test_redeliver_reopens_a_gave_up_claim_and_delivers_it_once(world: World) -> None:
    [config] = world.terminal_task()
    world.receiver.script(Answer(400))
    world.dispatch()
    assert world.claim("c-1")["state"] == "gave_up"

    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")

    assert run.code == 0, run.stderr
    [line] = run.of("redelivery")
    assert (line["configId"], line["before"], line["action"], line["outcome"]) == (
        "c-1",
        "gave_up",
        "reopen",
        "succeeded",
    )
    assert (line["state"], line["attemptCount"], line["lastStatus"]) == ("succeeded", 1, 204)
    [history] = line["redeliveries"]
    assert (history["previousState"], history["previousAttemptCount"], history["previousLastStatus"]) == (
        "gave_up",
        1,
        400,
    )
    assert history["forced"] is False
    [summary] = run.of("redeliver_summary")
    assert (summary["targets"], summary["succeeded"], summary["markerDeleted"]) == (1, 1, True)
    first, second = world.receiver.received()
    assert first.header("webhook-id") == second.header("webhook-id") == DeliveryKey(TENANT, TASK, 2, "c-1").webhook_id
    assert first.body == second.body and verify(second, config.signing_secret)
    claim = world.claim("c-1")
    assert claim["generation"] == 3  # 1: first claim, 2: reopened (fences any earlier holder), 3: taken over
    assert world.markers() == []


def test_redeliver_refuses_a_succeeded_claim_without_force(world: World) -> None:
    world.terminal_task()
    world.dispatch()
    before = world.claim("c-1")

    refused = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")

    assert "CLAIM_SUCCEEDED" in error_of(refused) and "--force" in refused.stderr
    assert world.claim("c-1") == before
    assert len(world.receiver.received()) == 1
    assert world.markers() == []  # nothing written, not even the marker

    forced = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2", "--force")

    assert forced.code == 0, forced.stderr
    [line] = forced.of("redelivery")
    assert (line["before"], line["state"], line["redeliveries"][0]["forced"]) == ("succeeded", "succeeded", True)
    first, second = world.receiver.received()
    assert first.header("webhook-id") == second.header("webhook-id")  # receivers de-duplicate on it


def test_redeliver_one_config_leaves_the_others_alone(world: World) -> None:
    world.terminal_task(configs=3)
    world.receiver.script(Answer(400), Answer(400), Answer(204))
    world.dispatch()
    assert [world.claim(f"c-{n}")["state"] for n in (1, 2, 3)] == ["gave_up", "gave_up", "succeeded"]

    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2", "--config-id", "c-2")

    assert run.code == 0, run.stderr
    assert [line["configId"] for line in run.of("redelivery")] == ["c-2"]
    assert [world.claim(f"c-{n}")["state"] for n in (1, 2, 3)] == ["gave_up", "succeeded", "succeeded"]
    assert len(world.receiver.received()) == 4
    assert world.markers() == []


def test_redeliver_of_an_event_never_delivered_claims_it_fresh(world: World) -> None:
    world.terminal_task()  # the marker is there, the stream has not run

    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")

    assert run.code == 0, run.stderr
    [line] = run.of("redelivery")
    assert (line["before"], line["action"], line["state"], line["generation"]) == (None, "claim", "succeeded", 1)
    assert len(world.receiver.received()) == 1 and world.markers() == []


def test_redeliver_that_fails_again_exits_non_zero_and_keeps_the_outcome(world: World) -> None:
    world.terminal_task()
    world.receiver.script(Answer(400), Answer(410))
    world.dispatch()

    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")

    assert "DELIVERY_NOT_SUCCEEDED" in error_of(run) and "c-1: gave_up" in run.stderr
    [line] = run.of("redelivery")
    assert (line["state"], line["reason"], line["lastStatus"]) == ("gave_up", "gone", 410)
    assert world.markers() == []  # terminal again: the marker went with it


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--task-id", "nope", "--event-sequence", "2"], "TASK_NOT_FOUND"),
        (["--task-id", TASK, "--event-sequence", "9"], "EVENT_NOT_FOUND"),
        (["--task-id", TASK, "--event-sequence", "1"], "NOT_TERMINAL_EVENT"),
        (["--task-id", TASK, "--event-sequence", "2", "--config-id", "c-9"], "CONFIG_NOT_FOUND"),
    ],
)
def test_redeliver_errors(world: World, argv: list[str], code: str) -> None:
    world.terminal_task()

    run = world.cli("redeliver", "--tenant", TENANT, *argv)

    assert code in error_of(run)
    assert world.receiver.received() == []


def test_redeliver_to_a_config_registered_after_the_event_is_refused(world: World) -> None:
    world.terminal_task()
    world.writer.register_push_config(tenant=TENANT, task_id=TASK, url=world.url, config_id="late")

    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2", "--config-id", "late")

    assert "CONFIG_NOT_ELIGIBLE" in error_of(run)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["show", "--tenant", TENANT],
        ["redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "zero"],
        ["redeliver", "--tenant", "a#b", "--task-id", TASK, "--event-sequence", "2"],
    ],
)
def test_usage_errors_exit_2(world: World, argv: list[str]) -> None:
    run = world.cli(*argv)
    assert run.code == 2 and run.stderr.startswith(f"{PROG}: usage error: "), run


def claim_attributes(sequence: int = 2) -> dict[str, Any]:
    return {
        schema.DELIVERY_TENANT: TENANT,
        schema.DELIVERY_TASK_ID: TASK,
        schema.DELIVERY_EVENT_SEQUENCE: sequence,
        schema.DELIVERY_CLAIM_SHARD: "0",
    }


def location_of(world: World, config_id: str, sequence: int = 2) -> ClaimLocation:
    return ClaimLocation(
        world.tables.deliveries,
        {schema.PK: {"S": schema.delivery_pk(TENANT, TASK, sequence)}, schema.DELIVERY_SK: {"S": config_id}},
    )


def test_redeliver_takes_over_a_crashed_holders_expired_claim(world: World) -> None:
    world.terminal_task()
    long_ago = FakeClock(time.time_ns() // 1_000_000 - 600_000)
    crashed = ClaimStore(clock=long_ago).acquire(
        location_of(world, "c-1"), lease_ms=1_000, attributes=claim_attributes()
    )
    assert crashed.claim is not None

    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")

    assert run.code == 0, run.stderr
    [line] = run.of("redelivery")
    assert (line["before"], line["action"], line["state"], line["generation"]) == (
        "pending",
        "take_over",
        "succeeded",
        2,
    )
    assert line["redeliveries"] == []  # nothing was reopened: the Redispatcher took it over
    assert len(world.receiver.received()) == 1


def test_redeliver_waits_for_a_live_holder_instead_of_posting(world: World) -> None:
    world.terminal_task()
    store = ClaimStore()
    held = store.acquire(location_of(world, "c-1"), lease_ms=60_000, attributes=claim_attributes())
    assert held.claim is not None
    claim = held.claim

    def holder_finishes() -> None:
        time.sleep(0.6)
        assert store.confirm(claim, state="succeeded", attributes={schema.DELIVERY_LAST_STATUS: 200}).ok

    finisher = threading.Thread(target=holder_finishes)
    finisher.start()
    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")
    finisher.join()

    assert run.code == 0, run.stderr
    [line] = run.of("redelivery")
    assert (line["action"], line["outcome"], line["state"], line["lastStatus"]) == (
        "wait_for_holder",
        "held",
        "succeeded",
        200,
    )
    assert world.receiver.received() == []  # the holder delivered it; the CLI never POSTs beside it


def test_redeliver_aborts_whole_when_a_claim_changes_under_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.terminal_task()
    world.receiver.script(Answer(400))
    world.dispatch()
    location = location_of(world, "c-1")
    original_read = ClaimStore.read
    changed: list[bool] = []

    def read_then_someone_else_reopens(self: ClaimStore, where: ClaimLocation) -> Any:
        record = original_read(self, where)
        if not changed:  # between our read and our transaction, another operator reopens it
            changed.append(True)
            world.ddb.update_item(
                TableName=world.tables.deliveries,
                Key=dict(location.key),
                UpdateExpression="SET #t = :t, #g = #g + :one",
                ExpressionAttributeNames={"#t": "token", "#g": "generation"},
                ExpressionAttributeValues={":t": {"S": "someone-else"}, ":one": {"N": "1"}},
            )
        return record

    monkeypatch.setattr(ClaimStore, "read", read_then_someone_else_reopens)
    run = world.cli("redeliver", "--tenant", TENANT, "--task-id", TASK, "--event-sequence", "2")

    assert "CLAIM_CHANGED" in error_of(run)
    assert world.markers() == []  # the marker put was in the same transaction: nothing landed
    assert world.claim("c-1")["state"] == "gave_up" and len(world.receiver.received()) == 1
