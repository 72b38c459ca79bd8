"""What the StreamRecovery reliability tests share: one world of real code paths and injected faults.

The world is the atomic moto server (over HTTP), the five StreamRecovery tables, the writer
library committing status updates, the real stream handler (``stream_handler.handler``,
driven with the markers stream's records read by GetRecords) and the real sweeper, posting to
a local webhook receiver on 127.0.0.1. Nothing in the handlers knows about tests: the harness
only

- gives the redispatchers a clock the test moves (the claim primitive's clock, the marker
  clock) and a fast ``DeliveryPolicy`` with tiny timeouts and backoffs;
- wraps the delivery function the redispatcher is constructed with (``deliver_fn``) and the
  marker delete of its own ``Redispatcher`` instances, so that an armed ``Crash`` makes the
  "process" die at one point by raising ``ProcessCrash`` (a ``BaseException``: nothing in the
  handlers catches it, exactly like a Lambda timeout or an out-of-memory kill):

  - ``BEFORE_POST``: after the claim and its fenced attempt-started write, before the POST;
  - ``AFTER_ACCEPTED_POST``: after the receiver answered 2xx, before the outcome is written;
  - ``BEFORE_MARKER_DELETE``: after every outcome was written, before the marker delete;

- scripts the receiver's answers (5xx, 429, slow answers past the read timeout, 4xx, a
  dropped connection).

It also records every ``DeliveryResult`` (the sender's view of each attempt), so a test can
tell a second accepted POST caused by a crash or a lost answer from one caused by a bug.
"""

from __future__ import annotations

import enum
import importlib
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from handlers.common.aws import client
from handlers.common.claims import ClaimStore
from handlers.stream_recovery import schema
from handlers.stream_recovery.delivery import DeliveryKey, DeliveryPolicy, DeliveryResult, Outcome, deliver
from handlers.stream_recovery.dispatch import DispatchTables, Redispatcher
from handlers.stream_recovery.markers import PendingDispatch
from handlers.stream_recovery.sweeper import STALE_MARKER_AGE_MICROS, Sweeper, SweepReport
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
from tests.support.webhook_stub import WebhookStub

COMMIT_MICROS = 1_800_000_000_000_000
CLAIM_EXPIRY_MS = 60_000  # on the fake clock
# Real seconds. The crash tests' policy leaves a loaded machine plenty of room (no answer is
# ever late by accident); the schedules' policy is fast -- one attempt is at most 0.05 + 0.1 s,
# the horizon holds one timed-out attempt and one more, or a few fast ones -- and their
# invariants tell an answer lost to a timeout from a duplicate. The claim lease is on the fake
# clock and only moves when a test moves it, so a live holder is never overtaken; the
# constructor still checks expiry > horizon. A module picks its policy with DELIVERY_POLICY.
POLICY = DeliveryPolicy(
    connect_timeout_seconds=1.0,
    read_timeout_seconds=1.0,
    retry_horizon_seconds=3.0,
    max_attempts=4,
    backoff_base_seconds=0.001,
    backoff_max_seconds=0.004,
    allow_http=True,  # the receiver is plain HTTP on 127.0.0.1: development flags only
    allow_private_targets=True,
)
FAST_POLICY = DeliveryPolicy(
    connect_timeout_seconds=0.05,
    read_timeout_seconds=0.1,
    retry_horizon_seconds=0.3,
    max_attempts=4,
    backoff_base_seconds=0.001,
    backoff_max_seconds=0.004,
    allow_http=True,
    allow_private_targets=True,
)


def slow_answer_seconds(policy: DeliveryPolicy) -> float:
    """An answer this late is past the read timeout: the sender gives up waiting, the receiver accepted."""
    return policy.read_timeout_seconds * 1.5


TERMINAL_CLAIM_STATES = frozenset({str(Outcome.SUCCEEDED), str(Outcome.GAVE_UP), str(Outcome.ABANDONED)})


class ProcessCrash(BaseException):  # not an error of the code under test: the process died
    """The worker process died here (Lambda timeout, out of memory, a kill). Nothing catches it."""


class Crash(enum.Enum):
    BEFORE_POST = "before_post"
    AFTER_ACCEPTED_POST = "after_accepted_post"
    BEFORE_MARKER_DELETE = "before_marker_delete"


class Clock:
    """One fake clock for everything that decides time: claims (ms), markers and sweeps (µs)."""

    def __init__(self, micros: int = COMMIT_MICROS) -> None:
        self.micros = micros

    def now_micros(self) -> int:
        return self.micros

    def now_ms(self) -> int:
        return self.micros // 1000

    def advance_ms(self, ms: int) -> None:
        self.micros += ms * 1000

    def past_lease(self) -> None:
        self.advance_ms(CLAIM_EXPIRY_MS + 1)

    def past_stale_age(self) -> None:
        self.micros += STALE_MARKER_AGE_MICROS + 1


@dataclass
class Faults:
    """The armed crash and what the sender saw, per webhook id."""

    armed: Crash | None = None
    fired: list[tuple[Crash, str | None]] = field(default_factory=list)  # (point, webhook id)
    results: dict[str, list[DeliveryResult]] = field(default_factory=lambda: defaultdict(list))
    crashes_before_post: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    crashes_after_accepted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Called right before a POST (after the fenced attempt-started write): a test's own hook.
    before_post_hook: Callable[[DeliveryKey], None] | None = None

    def reset(self) -> None:
        self.armed = None
        self.fired.clear()
        self.results.clear()
        self.crashes_before_post.clear()
        self.crashes_after_accepted.clear()
        self.before_post_hook = None

    def _fire(self, point: Crash, webhook_id: str | None) -> None:
        self.armed = None
        self.fired.append((point, webhook_id))
        raise ProcessCrash(f"crash {point.value} ({webhook_id})")

    def deliver(
        self, config: Any, key: DeliveryKey, payload: Any, *, before_attempt: Callable[[int], None], **options: Any
    ) -> DeliveryResult:
        """The real ``deliver``, with the crash points around the POST."""

        def before(number: int) -> None:
            before_attempt(number)  # the redispatcher's fenced attempt-started write
            if self.before_post_hook is not None:
                self.before_post_hook(key)
            if self.armed is Crash.BEFORE_POST:
                self.crashes_before_post[key.webhook_id] += 1
                self._fire(Crash.BEFORE_POST, key.webhook_id)

        result = deliver(config, key, payload, before_attempt=before, **options)
        self.results[key.webhook_id].append(result)
        if self.armed is Crash.AFTER_ACCEPTED_POST and result.outcome is Outcome.SUCCEEDED:
            self.crashes_after_accepted[key.webhook_id] += 1
            self._fire(Crash.AFTER_ACCEPTED_POST, key.webhook_id)
        return result

    def seen_accepted(self, webhook_id: str) -> int:
        """2xx answers the sender saw for this webhook id (over every call)."""
        return sum(
            1
            for result in self.results.get(webhook_id, [])
            for attempt in result.history
            if attempt.status is not None and 200 <= attempt.status <= 299
        )

    def attempts(self, webhook_id: str) -> list[Any]:
        return [attempt for result in self.results.get(webhook_id, []) for attempt in result.history]


class Receiver(WebhookStub):
    """The webhook stub with a way to drop answers still scripted (faults off)."""

    def clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    def scripted_left(self) -> int:
        with self._lock:
            return len(self._script)


def fresh_stream_handler() -> ModuleType:
    """Import the stream handler anew so its cold start reads the current environment."""
    sys.modules.pop("handlers.stream_recovery.stream_handler", None)
    return importlib.import_module("handlers.stream_recovery.stream_handler")


class World:
    """One moto account's StreamRecovery tables, driven by a fake clock; tenants keep tests apart."""

    def __init__(
        self, tables: StreamRecoveryTables, receiver: Receiver, handler_module: ModuleType, policy: DeliveryPolicy
    ) -> None:
        self.policy = policy
        self.receiver = receiver
        self.ddb = client("dynamodb")
        self.clock = Clock()
        self.faults = Faults()
        self.tenant = "acme"
        self.handler = handler_module
        self.generation = 0
        self._bind(tables)

    def _bind(self, tables: StreamRecoveryTables) -> None:
        self.tables = tables
        self.writer = StreamRecoveryWriter(
            tasks_table=tables.tasks,
            task_events_table=tables.task_events,
            push_configs_table=tables.push_configs,
            push_dispatch_enabled=True,
            pending_dispatches_table=tables.pending_dispatches,
            deliveries_table=tables.deliveries,
            clock_micros=self.clock.now_micros,
            allow_http_urls=True,
        )
        # The stream function and the sweeper function each have their own redispatcher, as
        # two Lambda functions would; the handler module keeps its real processing path.
        self.stream_redispatcher = self._redispatcher()
        self.sweeper_redispatcher = self._redispatcher()
        self.handler.redispatcher = self.stream_redispatcher  # type: ignore[attr-defined]
        self.sweeper = Sweeper(
            redispatcher=self.sweeper_redispatcher,
            pending_dispatches_table=tables.pending_dispatches,
            deliveries_table=tables.deliveries,
            claim_expiry_ms=CLAIM_EXPIRY_MS,
            claim_store=ClaimStore(clock=self.clock.now_ms),
            clock_micros=self.clock.now_micros,
        )
        arn = self.ddb.describe_table(TableName=tables.pending_dispatches)["Table"]["LatestStreamArn"]
        self.stream = StreamReader(client("dynamodbstreams"), arn)

    def fresh_tables(self) -> None:
        """Start over on five new, empty tables (and drop the old ones).

        moto deep-copies every table a TransactWriteItems touches (its rollback copy), stream
        records included, so a commit gets slower with every item earlier schedules left; and its
        index queries look at every item. Fresh tables every few schedules keep both cheap.
        """
        old = self.tables
        self.generation += 1
        names = {name: f"{getattr(old, name).split('-g')[0]}-g{self.generation}" for name in old.__dataclass_fields__}
        self._bind(create_stream_recovery_tables(self.ddb, StreamRecoveryTables(**names)))
        for name in old.__dataclass_fields__:
            self.ddb.delete_table(TableName=getattr(old, name))

    def _redispatcher(self) -> Redispatcher:
        redispatcher = Redispatcher(
            tables=DispatchTables(
                tasks=self.tables.tasks,
                task_events=self.tables.task_events,
                push_configs=self.tables.push_configs,
                pending_dispatches=self.tables.pending_dispatches,
                deliveries=self.tables.deliveries,
            ),
            policy=self.policy,
            claim_expiry_ms=CLAIM_EXPIRY_MS,
            claim_store=ClaimStore(clock=self.clock.now_ms),
            clock_micros=self.clock.now_micros,
            deliver_fn=self.faults.deliver,
        )
        delete_marker = redispatcher._delete_marker
        faults = self.faults

        def crashing_delete(marker: PendingDispatch) -> None:
            if faults.armed is Crash.BEFORE_MARKER_DELETE:
                faults._fire(Crash.BEFORE_MARKER_DELETE, None)
            delete_marker(marker)

        redispatcher._delete_marker = crashing_delete  # type: ignore[method-assign]
        return redispatcher

    # -- the application ---------------------------------------------------------------------

    def task_pk(self, task_id: str) -> str:
        return schema.task_pk(self.tenant, task_id)

    def commit(self, task_id: str, sequence: int, state: str) -> None:
        self.writer.commit_status_update(
            tenant=self.tenant, task_id=task_id, owner="alice", event_sequence=sequence, state=state
        )

    def register(self, task_id: str, name: str = "hook") -> PushConfig:
        return self.writer.register_push_config(
            tenant=self.tenant, task_id=task_id, url=f"{self.receiver.url}/{task_id}/{name}"
        )

    def delete_task(self, task_id: str) -> None:
        self.ddb.delete_item(TableName=self.tables.tasks, Key={schema.PK: {"S": self.task_pk(task_id)}})

    # -- the functions -----------------------------------------------------------------------

    def invoke_stream(self, records: list[dict[str, Any]]) -> list[str] | None:
        """The stream function on ``records``: the failed sequence numbers, or None if it crashed."""
        try:
            response = self.handler.handler(self.stream.lambda_event(records), FakeLambdaContext())
        except ProcessCrash:
            return None
        return reported(response)

    def sweep(self) -> SweepReport | None:
        """One scheduled sweeper run; None if the process crashed."""
        try:
            return self.sweeper.sweep()
        except ProcessCrash:
            return None

    # -- what is stored ----------------------------------------------------------------------

    def markers(self) -> list[dict[str, Any]]:
        items = self._scan(self.tables.pending_dispatches)
        return [item for item in items if item[schema.MARKER_TENANT]["S"] == self.tenant]

    def claims(self) -> dict[tuple[str, int, str], dict[str, Any]]:
        """Every delivery claim of this tenant by (task id, event sequence, config id)."""
        found = {}
        for item in self._scan(self.tables.deliveries):
            if item.get(schema.DELIVERY_TENANT, {}).get("S") != self.tenant:
                continue
            key = (
                item[schema.DELIVERY_TASK_ID]["S"],
                int(item[schema.DELIVERY_EVENT_SEQUENCE]["N"]),
                item[schema.DELIVERY_SK]["S"],
            )
            found[key] = item
        return found

    def claim(self, task_id: str, sequence: int, config_id: str) -> dict[str, Any]:
        key = {
            schema.PK: {"S": schema.delivery_pk(self.tenant, task_id, sequence)},
            schema.DELIVERY_SK: {"S": config_id},
        }
        return self.ddb.get_item(TableName=self.tables.deliveries, Key=key, ConsistentRead=True).get("Item", {})

    def webhook_id(self, task_id: str, sequence: int, config_id: str) -> str:
        return DeliveryKey(self.tenant, task_id, sequence, config_id).webhook_id

    def posts(self, webhook_id: str, since: int = 0) -> list[Any]:
        return [r for r in self.receiver.received()[since:] if r.header("webhook-id") == webhook_id]

    def _scan(self, table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
        while True:
            page = self.ddb.scan(**kwargs)
            items.extend(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.fixture
def world(aws: MotoServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[World]:
    policy = getattr(request.module, "DELIVERY_POLICY", POLICY)
    tables = create_stream_recovery_tables(client("dynamodb"))
    for name, value in {
        ENV_TASKS_TABLE: tables.tasks,
        ENV_TASK_EVENTS_TABLE: tables.task_events,
        ENV_PUSH_CONFIGS_TABLE: tables.push_configs,
        ENV_PENDING_DISPATCHES_TABLE: tables.pending_dispatches,
        ENV_DELIVERIES_TABLE: tables.deliveries,
        ENV_PUSH_DISPATCH: "true",
        "DELIVERY_ALLOW_HTTP": "true",
        "DELIVERY_ALLOW_PRIVATE_TARGETS": "true",
        "DELIVERY_RETRY_HORIZON_SECONDS": "30",
        "DELIVERY_CLAIM_EXPIRY_SECONDS": "120",
        "FUNCTION_TIMEOUT_SECONDS": "60",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    module = fresh_stream_handler()
    with Receiver() as receiver:
        yield World(tables, receiver, module, policy)
    sys.modules.pop("handlers.stream_recovery.stream_handler", None)
