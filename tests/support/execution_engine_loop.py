"""ExecutionEngine's orchestrator in a local loop against moto: the driver plays S3, Lambda and the watchdog.

``LocalLoop`` creates what a pass touches -- the three tables (``schema.ALL_TABLES``), the internal
and done buckets, a watchdog state machine (a one-state Pass definition, never executed: moto
records the executions, and starting one is all the dispatch ticket needs) -- and builds a real
``Orchestrator`` on them: a real ``RunStore``, a real ``ClaimStore`` on a ``FakeClock``, real
boto3 clients for S3, Step Functions and SSM, and one target, ``"lambda"``, that records its
calls instead of invoking a worker (``RecordingTarget``: the counts per order are what "dispatched
at most once" is checked on; a behaviour the caller gives decides what the "worker" does).

The driver stands in for S3 -> Lambda notification delivery: ``deliver(run_id)`` calls
``orchestrator.handle`` itself, so a test decides when each callback arrives, how often, and in
which order. Runs are inserted directly (``insert_run``: the items schema.py describes, no init
handler), results are written with ``results.write_result_once`` as the worker or the watchdog
would (``write_result``).

Crashes. Every call a pass makes -- DynamoDB through the container-wide client
(``handlers.common.aws.client``, which RunStore and ClaimStore use), S3, Step Functions, SSM, and
the target call itself -- goes through one ``CallGate`` (botocore ``before-call`` hooks). A
delivery may be given ``crash_at=k``: the k-th call of that pass raises ``OrchestratorCrash`` (a
``BaseException``, like a process dying: nothing in the code under test catches it) and so does
every later call of that pass, so the orchestrator's ``release`` of its lock on the way out fails
too: the lock stays held until its lease runs out, as when a Lambda container dies. The
orchestrator instance is then replaced by a fresh one (a new container). The gate also counts the
calls of each pass per service (``Delivery.calls``), which the benchmark prints.

A delivery that meets a held lock is given no time to wait (``deadline_monotonic`` leaves no
margin past ``PASS_RESERVE_SECONDS``): ``handle`` raises ``ClaimHeldError`` at once, as the real
handler does at its deadline, and the caller retries it later (Lambda's asynchronous retry), after
moving the clock past ``orchestration.LOCK_LEASE_MS``.

A delivery may instead be given ``stall_at=k`` and ``during_stall``: before its k-th call the pass
stands still while ``during_stall`` runs -- typically the clock moving past the lease and another
delivery taking the lock over -- and then it goes on with its stale view (a stalled holder; its
next lock extension fails with ``LockLostError``: the delivery failed, to be retried).

The gate counts the calls of the pass on top (a stalled pass is below the one that runs during
its stall); calls made outside a delivery (the driver's own, e.g. ``insert_run``) are not
counted. A crash or stall point is the same call on every replay only when the pass makes its
calls in one order: a test that replays them runs the dispatch pool with one thread.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from handlers.common.aws import DEFAULT_RETRY_CONFIG, client
from handlers.common.claims import ClaimHeldError, ClaimStore
from handlers.common.dynamo_items import to_plain
from handlers.execution_engine import orchestration, schema
from handlers.execution_engine.orchestration import LockLostError, Orchestrator, PassReport
from handlers.execution_engine.results import OrderResult, write_result_once
from handlers.execution_engine.run_store import OrderRecord, RunRecord, RunStore, job_item, order_item
from tests.support.claim_tables import FakeClock
from tests.support.stream_recovery_tables import create_table_kwargs

SOPS_KEY_PREFIX = "/execution-engine/sops/"
WATCHDOG_DEFINITION = json.dumps({"StartAt": "CheckResult", "States": {"CheckResult": {"Type": "Pass", "End": True}}})
ROLE_ARN = "arn:aws:iam::123456789012:role/execution-engine-watchdog"
# The driver's own clients (writing results, reading the outcome) never go through the gate.
_DRIVER_CONFIG = Config(retries={"total_max_attempts": 3, "mode": "standard"}, max_pool_connections=32)


class OrchestratorCrash(BaseException):
    """The orchestrator's process died at this call (raised by the gate, caught by the driver)."""


@dataclass(frozen=True)
class LoopNames:
    orders: str = "EeOrders"
    order_events: str = "EeOrderEvents"
    locks: str = "EeLocks"
    internal_bucket: str = "ee-internal"
    done_bucket: str = "ee-done"
    state_machine: str = "ee-watchdog"

    def table(self, table: schema.TableSchema) -> str:
        return {
            schema.ORDERS.role: self.orders,
            schema.ORDER_EVENTS.role: self.order_events,
            schema.LOCKS.role: self.locks,
        }[table.role]


@dataclass
class PassCalls:
    """The calls of one pass, as the gate saw them (each counted before it was sent)."""

    crash_at: int | None = None
    stall_at: int | None = None
    on_stall: Callable[[], None] | None = None
    count: int = 0
    crashed_at: int | None = None  # the call number that crashed (None: no crash)
    stalled: bool = False
    by_service: Counter[str] = field(default_factory=Counter)
    s3_puts: list[str] = field(default_factory=list)  # keys of PutObject calls that were sent


class CallGate:
    """botocore hooks (and the target's tick): count a pass's calls, crash or stall it on cue, and
    note every watchdog execution started (``tickets``: execution names)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack: list[PassCalls] = []  # the pass now running on top (a stalled one below it)
        self.tickets: set[str] = set()

    def attach(self, boto_client: Any) -> None:
        events = boto_client.meta.events
        events.register("before-parameter-build.s3.PutObject", self._note_key, unique_id=f"ee-loop-key-{id(self)}")
        events.register("before-call", self._before_call, unique_id=f"ee-loop-gate-{id(self)}")
        events.register("after-call.sfn.StartExecution", self._started, unique_id=f"ee-loop-ticket-{id(self)}")

    @contextlib.contextmanager
    def watching(
        self, crash_at: int | None = None, stall_at: int | None = None, on_stall: Callable[[], None] | None = None
    ) -> Iterator[PassCalls]:
        calls = PassCalls(crash_at=crash_at, stall_at=stall_at, on_stall=on_stall)
        with self._lock:
            self._stack.append(calls)
        try:
            yield calls
        finally:
            with self._lock:
                self._stack.remove(calls)

    def tick(self, service: str, operation: str, key: str | None = None) -> None:
        with self._lock:
            if not self._stack:
                return
            calls = self._stack[-1]
            if calls.crashed_at is not None:
                raise OrchestratorCrash(f"dead since call {calls.crashed_at}: {service}.{operation}")
            calls.count += 1
            if calls.crash_at is not None and calls.count >= calls.crash_at:
                calls.crashed_at = calls.count
                raise OrchestratorCrash(f"crashed at call {calls.count}: {service}.{operation}")
            calls.by_service[service] += 1
            if service == "s3" and operation == "PutObject" and key is not None:
                calls.s3_puts.append(key)
            stall = calls.stall_at == calls.count and calls.on_stall is not None and not calls.stalled
            calls.stalled = calls.stalled or stall
        if stall and calls.on_stall is not None:
            calls.on_stall()  # this pass stands still while the world (another pass) moves on

    def _note_key(self, params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["ee_loop_key"] = params.get("Key")  # before-call sees the serialized request only

    def _before_call(self, model: Any, context: Mapping[str, Any], event_name: str, **_: Any) -> None:
        self.tick(event_name.split(".")[1], model.name, context.get("ee_loop_key"))

    def _started(self, parsed: Mapping[str, Any], **_: Any) -> None:
        arn = parsed.get("executionArn")
        if arn:
            with self._lock:
                self.tickets.add(str(arn).rsplit(":", 1)[1])


# What the "worker" does when the target is called: raise (the target call fails), or anything
# else (e.g. write its result at once, or remember to write it later).
Behaviour = Callable[[RunRecord, OrderRecord], None]


@dataclass
class RecordingTarget:
    """The ``lambda`` target: counts its calls per (run, order) and runs the caller's behaviour."""

    gate: CallGate
    behaviour: Behaviour = field(default=lambda run, order: None)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, run: RunRecord, order: OrderRecord) -> Mapping[str, Any]:
        self.gate.tick("target", "start")  # a crash here: the target was never called
        with self._lock:
            self.calls[(run.run_id, order.num)] += 1
        self.behaviour(run, order)
        return {"execution_url": f"local:{run.run_id}/{order.num}"}


@dataclass(frozen=True)
class OrderSpec:
    """One order of a run to insert: 1-based positions of its dependencies, must_succeed, timeout."""

    dependencies: tuple[int, ...] = ()
    must_succeed: bool = True
    timeout: int = 600


@dataclass
class Delivery:
    """What one callback delivery did: a report, or a crash, or a held lock (to be retried)."""

    run_id: str
    calls: PassCalls
    report: PassReport | None = None
    crashed: bool = False
    held: bool = False  # the lock was held (by a dead or a stalled holder): Lambda retries it
    lost_lock: bool = False  # a stalled pass found its lock taken over (LockLostError): retried too

    @property
    def failed(self) -> bool:
        return self.crashed or self.held or self.lost_lock


class LocalLoop:
    """The orchestrator and its AWS resources in moto (``AWS_ENDPOINT_URL`` must point there)."""

    def __init__(self, *, clock: FakeClock | None = None, names: LoopNames | None = None) -> None:
        self.clock = clock or FakeClock()
        self.names = names or LoopNames()
        self.gate = CallGate()
        self.target = RecordingTarget(self.gate)
        self.ddb = boto3.client("dynamodb", config=_DRIVER_CONFIG)
        self.s3 = boto3.client("s3", config=_DRIVER_CONFIG)
        self.ssm = boto3.client("ssm", config=_DRIVER_CONFIG)
        self.stepfunctions = boto3.client("stepfunctions", config=_DRIVER_CONFIG)
        self._create_resources()
        # The orchestrator's clients: its own, each behind the gate (the shared DynamoDB client too).
        self._orchestrator_clients = {
            name: boto3.session.Session().client(name, config=DEFAULT_RETRY_CONFIG)
            for name in ("s3", "stepfunctions", "ssm")
        }
        for boto_client in (*self._orchestrator_clients.values(), client("dynamodb")):
            self.gate.attach(boto_client)
        self.store = RunStore(orders_table=self.names.orders, events_table=self.names.order_events, clock_ms=self.clock)
        self.orchestrator = self.new_orchestrator()
        self.crashes = 0

    # -- resources ------------------------------------------------------------------------------

    def _create_resources(self) -> None:
        for table in schema.ALL_TABLES:
            self.ddb.create_table(**create_table_kwargs(self.names.table(table), table))
        for bucket in (self.names.internal_bucket, self.names.done_bucket):
            self.s3.create_bucket(Bucket=bucket)
        self.state_machine_arn = self.stepfunctions.create_state_machine(
            name=self.names.state_machine, definition=WATCHDOG_DEFINITION, roleArn=ROLE_ARN
        )["stateMachineArn"]

    def new_orchestrator(self) -> Orchestrator:
        """A fresh orchestrator (a new Lambda container): real store, claims, clients; the recording target."""
        return Orchestrator(
            store=self.store,
            claims=ClaimStore(clock=self.clock),
            locks_table=self.names.locks,
            internal_bucket=self.names.internal_bucket,
            done_bucket=self.names.done_bucket,
            watchdog_state_machine_arn=self.state_machine_arn,
            targets={schema.TARGET_LAMBDA: self.target},
            s3=self._orchestrator_clients["s3"],
            stepfunctions=self._orchestrator_clients["stepfunctions"],
            ssm=self._orchestrator_clients["ssm"],
        )

    # -- runs -----------------------------------------------------------------------------------

    def insert_run(self, orders: Sequence[OrderSpec], *, run_id: str | None = None) -> str:
        """A run of ``orders`` (status queued), its job item (running), its SOPS key parameter and
        its init result ``0000`` (the result that triggers the first pass: deliver it next)."""
        run_id = run_id or secrets.token_hex(16)
        trace_id = secrets.token_hex(16)
        now = self.clock()
        expires_at = now // 1000 + schema.ORDERS_TTL_SECONDS
        sops_key_parameter = f"{SOPS_KEY_PREFIX}{run_id}"
        self.ssm.put_parameter(
            Name=sops_key_parameter,
            Value=f"AGE-SECRET-KEY-{secrets.token_hex(16).upper()}",
            Type="SecureString",
            Tier="Advanced",
            Policies=json.dumps([{"Type": "Expiration", "Version": "1.0", "Attributes": {"Timestamp": "2099-01-01"}}]),
        )
        items = [
            order_item(
                run_id,
                schema.order_num(position),
                name=f"order-{schema.order_num(position)}",
                execution_target=schema.TARGET_LAMBDA,
                timeout=spec.timeout,
                must_succeed=spec.must_succeed,
                dependency_nums=[schema.order_num(d) for d in spec.dependencies],
                expires_at=expires_at,
            )
            for position, spec in enumerate(orders, start=1)
        ]
        job = job_item(
            run_id,
            order_count=len(orders),
            trace_id=trace_id,
            flow_id=f"loop:{trace_id}-exec",
            username="loop",
            job_timeout=3600,
            sops_key_parameter=sops_key_parameter,
            done_bucket=self.names.done_bucket,
            created_at_ms=now,
            expires_at=expires_at,
        )
        self.store.insert_run(job, items)
        self.write_result(run_id, schema.JOB_ORDER_NUM, schema.SUCCEEDED, written_by="orchestrator", log="initialised")
        return run_id

    def write_result(
        self,
        run_id: str,
        num: str,
        status: str,
        *,
        written_by: str = "worker",
        log: str = "",
        reason: str | None = None,
    ) -> bool:
        """result.json of an order, first writer wins (False: another result was there)."""
        result = OrderResult(status=status, log=log, reason=reason, written_by=written_by)
        return write_result_once(self.s3, self.names.internal_bucket, schema.callback_key(run_id, num), result)

    # -- callbacks ------------------------------------------------------------------------------

    def deliver(
        self,
        run_id: str,
        *,
        crash_at: int | None = None,
        stall_at: int | None = None,
        during_stall: Callable[[], None] | None = None,
    ) -> Delivery:
        """One S3 notification of a result.json of ``run_id``: one ``handle`` call, given no time to
        wait for a held lock. ``crash_at``: the pass dies at its k-th call (1-based). ``stall_at``:
        before its k-th call the pass stands still while ``during_stall`` runs (e.g. the clock moves
        past the lease and another delivery takes the lock over), then it goes on."""
        orchestrator = self.orchestrator
        with self.gate.watching(crash_at, stall_at, during_stall) as calls:
            delivery = Delivery(run_id, calls)
            try:
                delivery.report = orchestrator.handle(
                    run_id, deadline_monotonic=time.monotonic() + orchestration.PASS_RESERVE_SECONDS
                )
            except OrchestratorCrash:
                delivery.crashed = True
                self.crashes += 1
                if self.orchestrator is orchestrator:
                    self.orchestrator = self.new_orchestrator()
            except ClaimHeldError:
                delivery.held = True
            except LockLostError:
                delivery.lost_lock = True
        return delivery

    def lease_runs_out(self) -> None:
        """Time passes until any lock a dead holder left behind is reclaimable (a retry's delay)."""
        self.clock.advance(orchestration.LOCK_LEASE_MS + 1)

    # -- what the world now looks like -------------------------------------------------------------

    def result_of(self, run_id: str, num: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.names.internal_bucket, Key=schema.callback_key(run_id, num))["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body.read()))

    def watchdog_started(self, run_id: str, num: str) -> bool:
        """True when the order's watchdog execution (its dispatch ticket) exists."""
        arn = self.state_machine_arn.replace(":stateMachine:", ":execution:")
        try:
            self.stepfunctions.describe_execution(executionArn=f"{arn}:{schema.watchdog_execution_name(run_id, num)}")
        except self.stepfunctions.exceptions.ExecutionDoesNotExist:
            return False
        return True

    def done_marker(self, run_id: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.names.done_bucket, Key=schema.done_key(run_id))["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body.read()))

    def sops_key_exists(self, run_id: str) -> bool:
        try:
            self.ssm.get_parameter(Name=f"{SOPS_KEY_PREFIX}{run_id}", WithDecryption=False)
        except self.ssm.exceptions.ParameterNotFound:
            return False
        return True

    def events(self, trace_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self.ddb.get_paginator("query").paginate(
            TableName=self.names.order_events,
            KeyConditionExpression="#t = :t",
            ExpressionAttributeNames={"#t": schema.TRACE_ID},
            ExpressionAttributeValues={":t": {"S": trace_id}},
            ConsistentRead=True,
        ):
            items += [to_plain(item) or {} for item in page["Items"]]
        return items

    def lock(self, run_id: str) -> dict[str, Any] | None:
        answer = self.ddb.get_item(
            TableName=self.names.locks, Key={schema.PK: {"S": schema.lock_pk(run_id)}}, ConsistentRead=True
        )
        return to_plain(answer.get("Item"))
