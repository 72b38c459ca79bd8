"""Randomized schedules of the ExecutionEngine orchestrator (hypothesis, seeded) against the atomic moto.

A schedule is a run and what the world does to it. The run: 1-30 orders, each depending on a
few earlier ones (acyclic by construction), ``must_succeed`` at random, and an outcome drawn per
order -- the worker reports ``succeeded`` or ``failed`` (at once, from inside the target call,
or at a later step), it never reports (the watchdog writes ``timed_out``; or ``hard_cap_reached``),
or the target call itself fails. The world's steps, interpreted against the loop's state
(tests/support/execution_engine_loop.py: the driver delivers S3 notifications by calling
``Orchestrator.handle`` itself):

- ``deliver i``: one pending callback, picked at random (callbacks arrive in any order);
- ``duplicate i``: a callback delivered again (S3 notifications are at-least-once);
- ``report i``: a dispatched worker writes its result, whose callback joins the pending ones;
- ``watchdog i``: an order whose worker will never report is declared by its watchdog;
- ``crash k``: the next delivery's pass dies at its k-th call (DynamoDB, S3, Step Functions,
  SSM or the target call) and never releases its lock; the callback fails (Lambda retries it);
- ``stall k``: the next delivery's pass stands still before its k-th call while the lease runs
  out and another callback's pass takes the lock over; then it goes on with its stale view;
- ``retry``: the clock moves past the lock's lease and a failed callback is delivered again
  (Lambda's asynchronous retry). A callback that meets a held lock fails at once and waits here.

Then the schedule drains: every pending and failed callback delivered, every worker reports,
and every watchdog whose order has no result fires (its timeout passed), until the job is
finalized. Invariants, against a model the test computes itself from the DAG and the world's
record (which orders the target was called for, which watchdogs were started, which results
the orchestrator wrote):

- every order ends with the status the rules give: ``dependency_failed`` when a dependency that
  must succeed did not, else its worker's result, or the watchdog's, or ``failed`` for a target
  call that failed (when the orchestrator lived to record it); every order is terminal;
- every order was dispatched at most once (the recording target's counts), and exactly the
  orders that were not failed for a dependency were dispatched (their watchdog exists);
- the job is finalized exactly once with the status of the rules (timed_out > failed >
  succeeded over the orders that must succeed): the job item's status and finalize time, one
  ``job_completed`` event at that time with the final statuses, the done object saying the same,
  the lock ``completed`` (a later callback is a one-call no-op), the run's SOPS key deleted;
- at most one ``order_dispatched`` and one ``order_finished`` event per order.

Not covered here: two live passes at the very same time (the lock excludes them; its own
schedules are tests/reliability/common/test_claim_schedules.py), real Lambda delivery and the
real watchdog state machine (the driver plays both), and the dispatch pool's parallelism in
schedules with a crash or a stall (those run it with one thread, so the k-th call is the same
call on every replay; schedules without one use the real DISPATCH_CONCURRENCY).

``make test`` runs 200 schedules (EXECUTION_ENGINE_SCHEDULES); the seed is fixed
(EXECUTION_ENGINE_SCHEDULE_SEED to vary it). A failing schedule is printed by hypothesis
(``schedule=...``: replay it with ``@example``) with a trace of what each step did.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from handlers.execution_engine import orchestration, schema
from handlers.execution_engine.run_store import OrderRecord, RunRecord
from tests.support.execution_engine_loop import Delivery, LocalLoop, OrderSpec
from tests.support.moto_server import MotoServer

SCHEDULES = int(os.environ.get("EXECUTION_ENGINE_SCHEDULES", "200"))
SEED = int(os.environ.get("EXECUTION_ENGINE_SCHEDULE_SEED", "20261203"))

SUCCEEDS, FAILS, NEVER, HARD_CAP, TARGET_ERROR = "succeeds", "fails", "never", "hard_cap", "target_error"
OUTCOMES = (SUCCEEDS, FAILS, NEVER, HARD_CAP, TARGET_ERROR)
OUTCOME_WEIGHTS = (10, 3, 1.5, 0.5, 1)
ACTIONS = ("deliver", "duplicate", "report", "watchdog", "crash", "stall", "retry")
WEIGHTS = (6, 1, 4, 1, 2.5, 1, 1.5)
MAX_ORDERS = 30
# Orders per run: mostly small, so 200 schedules stay within ~90 s (a pass costs ~10 moto calls per order).
SIZES = ((1, 3), (4, 6), (7, MAX_ORDERS))
SIZE_WEIGHTS = (7, 3, 0.3)
CRASH_POINTS = 20  # a crash or stall before call 1..20 of the next pass (most passes here make 7-30)
MAX_DRAIN_ROUNDS = MAX_ORDERS + 10

# An order: (dependencies as 1-based positions, must_succeed, outcome, reports_at_once).
Order = tuple[tuple[int, ...], bool, str, bool]
Step = tuple[str, int]
Schedule = tuple[tuple[Order, ...], tuple[Step, ...]]


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    """A run of 1-30 orders (mostly small: the file must stay fast) and 1-2 steps per order.

    Drawn from a Random seeded by an integer hypothesis draws: with ``st.randoms()`` here, 7 of
    30 schedules were repeats of earlier ones; a new seed is a new schedule.
    """
    rnd = random.Random(draw(st.integers(min_value=0, max_value=2**64 - 1)))
    size = rnd.choices(SIZES, SIZE_WEIGHTS)[0]
    count = rnd.randint(*size)
    orders: list[Order] = []
    for position in range(1, count + 1):
        fan_in = min(position - 1, rnd.choice((0, 1, 1, 2, 2, 3)))
        dependencies = tuple(sorted(rnd.sample(range(1, position), fan_in)))
        outcome = rnd.choices(OUTCOMES, OUTCOME_WEIGHTS)[0]
        orders.append((dependencies, rnd.random() < 0.7, outcome, rnd.random() < 0.3))
    steps: list[Step] = []
    for _ in range(rnd.randint(count, 2 * count + 1)):
        action = rnd.choices(ACTIONS, WEIGHTS)[0]
        steps.append((action, rnd.randint(1, CRASH_POINTS) if action in ("crash", "stall") else rnd.randrange(1000)))
    return tuple(orders), tuple(steps)


@dataclass
class World:
    """One schedule being played: the callbacks in flight and what the world knows happened."""

    loop: LocalLoop
    orders: tuple[Order, ...]
    run_id: str = ""
    pending: list[str] = field(default_factory=list)  # callbacks S3 has yet to deliver (order nums)
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # failed deliveries, for Lambda to retry
    unreported: list[str] = field(default_factory=list)  # called workers that report later
    reported_now: list[str] = field(default_factory=list)  # results written during the last pass
    orchestrator_results: set[str] = field(default_factory=set)  # result.json written by a pass
    armed_crash: int | None = None
    armed_stall: int | None = None
    crashes: int = 0
    stalls: int = 0
    finalized: bool = False
    trace: list[str] = field(default_factory=list)

    def outcome(self, num: str) -> str:
        return self.orders[int(num) - 1][2]

    # -- the "worker" behind the recording target -------------------------------------------------

    def behaviour(self, run: RunRecord, order: OrderRecord) -> None:
        if run.run_id != self.run_id:
            raise AssertionError(f"the target was called for another run: {run.run_id}")
        _, _, outcome, at_once = self.orders[int(order.num) - 1]
        if outcome == TARGET_ERROR:
            raise ClientError({"Error": {"Code": "ServiceException", "Message": "worker unavailable"}}, "Invoke")
        if outcome in (SUCCEEDS, FAILS):
            if at_once:
                self.report(order.num)
                self.reported_now.append(order.num)
            else:
                self.reported_now.append(f"later:{order.num}")

    def report(self, num: str) -> None:
        status = schema.SUCCEEDED if self.outcome(num) == SUCCEEDS else schema.FAILED
        self.loop.write_result(self.run_id, num, status, log=f"order {num} {status}")

    # -- deliveries -------------------------------------------------------------------------------

    def deliver(self, num: str, label: str) -> Delivery:
        crash_at, stall_at = self.armed_crash, self.armed_stall
        self.armed_crash = self.armed_stall = None
        self.reported_now = []
        delivery = self.loop.deliver(
            self.run_id, crash_at=crash_at, stall_at=stall_at, during_stall=self._takeover if stall_at else None
        )
        self._after(delivery, num, f"{label} {num}" + (f" (crash at {crash_at})" if crash_at else ""))
        return delivery

    def _takeover(self) -> None:
        """While a pass stands still: its lease runs out and another callback's pass takes over."""
        self.loop.lease_runs_out()
        stalled_reports, self.reported_now = self.reported_now, []
        num = self.pending.pop(0) if self.pending else (self.delivered[-1] if self.delivered else "0000")
        delivery = self.loop.deliver(self.run_id)
        self._after(delivery, num, f"  during the stall: deliver {num}")
        self.reported_now = stalled_reports

    def _after(self, delivery: Delivery, num: str, label: str) -> None:
        for entry in sorted(self.reported_now):  # the pool may have run the workers in any order
            if entry.startswith("later:"):
                self.unreported.append(entry.removeprefix("later:"))
            else:
                self.pending.append(entry)
        self.reported_now = []
        prefix = f"{schema.CALLBACK_PREFIX}{self.run_id}/"
        for key in delivery.calls.s3_puts:
            if key.startswith(prefix):  # a failed target call recorded: S3 notifies that result too
                written = key.removeprefix(prefix).split("/")[0]
                self.orchestrator_results.add(written)
                self.pending.append(written)
        self.crashes += delivery.crashed
        self.stalls += delivery.calls.stalled
        if delivery.failed:
            self.failed.append(num)
            what = "CRASHED" if delivery.crashed else ("lock held" if delivery.held else "lock lost")
        else:
            self.delivered.append(num)
            report = delivery.report
            assert report is not None
            self.finalized = self.finalized or report.outcome in ("finalized", "already_finalized")
            what = (
                f"{report.outcome}: recorded {report.recorded} dispatched {report.dispatched} "
                f"dependency_failed {report.dependency_failed} dispatch_failed {report.dispatch_failed} "
                f"recovered {report.recovered}"
            )
        self.trace.append(
            f"{label}: {what} ({delivery.calls.count} calls{', stalled' if delivery.calls.stalled else ''})"
        )

    def retry(self) -> None:
        self.loop.lease_runs_out()
        self.deliver(self.failed.pop(0), "retry")

    def watchdog_candidates(self) -> list[str]:
        """Orders whose watchdog is running and whose result no worker will write."""
        written = {num for num in self.delivered + self.pending + self.failed}  # every callback had a result
        return sorted(
            num
            for num in self.ticketed()
            if num not in written and num not in self.unreported and num not in self.orchestrator_results
        )

    def ticketed(self) -> set[str]:
        prefix = f"{self.run_id}-"
        return {name.removeprefix(prefix) for name in self.loop.gate.tickets if name.startswith(prefix)}

    def watchdog(self, num: str) -> None:
        status = schema.HARD_CAP_REACHED if self.outcome(num) == HARD_CAP else schema.TIMED_OUT
        won = self.loop.write_result(self.run_id, num, status, written_by="watchdog", reason="no result")
        self.trace.append(f"watchdog {num}: {status} {'written' if won else 'lost to an earlier result'}")
        self.pending.append(num)

    # -- one step ---------------------------------------------------------------------------------

    def step(self, action: str, value: int) -> None:
        if action == "deliver" and self.pending:
            self.deliver(self.pending.pop(value % len(self.pending)), "deliver")
        elif action == "duplicate" and self.delivered:
            self.deliver(self.delivered[value % len(self.delivered)], "duplicate")
        elif action == "report" and self.unreported:
            num = self.unreported.pop(value % len(self.unreported))
            self.report(num)
            self.trace.append(f"report {num}")
            self.pending.append(num)
        elif action == "watchdog" and (candidates := self.watchdog_candidates()):
            self.watchdog(candidates[value % len(candidates)])
        elif action == "crash":
            self.armed_crash = value
        elif action == "stall":
            self.armed_stall = value
        elif action == "retry" and self.failed:
            self.retry()

    def drain(self) -> None:
        """Deliver, report and declare everything left (a crash or stall still armed hits the first delivery)."""
        for _ in range(MAX_DRAIN_ROUNDS):
            while self.pending:
                self.deliver(self.pending.pop(0), "drain")
            while self.failed:
                self.retry()
            for num in sorted(self.unreported):
                self.report(num)
                self.pending.append(num)
            self.unreported.clear()
            if not self.pending:
                for num in self.watchdog_candidates():  # their timeouts have passed
                    self.watchdog(num)
            if self.finalized and not self.pending and not self.failed:
                return
        raise AssertionError(f"the job did not finalize within {MAX_DRAIN_ROUNDS} drain rounds")


def expected_statuses(world: World, calls: Counter[str]) -> dict[str, str]:
    """What each order must end as, from the DAG and the world's record (not from the tables)."""
    tickets = world.ticketed()
    expected: dict[str, str] = {}
    for position, (dependencies, _, outcome, _) in enumerate(world.orders, start=1):
        num = schema.order_num(position)
        blocked = any(
            expected[schema.order_num(d)] != schema.SUCCEEDED and world.orders[d - 1][1] for d in dependencies
        )
        if blocked:
            assert calls[num] == 0 and num not in tickets, f"{num}: dispatched although a dependency failed it"
            expected[num] = schema.DEPENDENCY_FAILED
            continue
        assert num in tickets, f"{num}: all its dependencies satisfied it, but it was never dispatched"
        if calls[num] and outcome in (SUCCEEDS, FAILS):
            expected[num] = schema.SUCCEEDED if outcome == SUCCEEDS else schema.FAILED
        elif calls[num] and outcome == TARGET_ERROR and num in world.orchestrator_results:
            expected[num] = schema.FAILED
        else:  # never reported, or the pass died between the ticket and (recording) the target call
            expected[num] = schema.HARD_CAP_REACHED if outcome == HARD_CAP else schema.TIMED_OUT
    return expected


def expected_job_status(world: World, expected: dict[str, str]) -> str:
    counted = [expected[schema.order_num(p)] for p, order in enumerate(world.orders, start=1) if order[1]]
    if any(status in (schema.TIMED_OUT, schema.HARD_CAP_REACHED) for status in counted):
        return schema.JOB_TIMED_OUT
    if any(status in (schema.FAILED, schema.DEPENDENCY_FAILED) for status in counted):
        return schema.JOB_FAILED
    return schema.JOB_SUCCEEDED


def check(world: World) -> None:
    loop, run_id = world.loop, world.run_id
    calls = Counter({num: count for (run, num), count in loop.target.calls.items() if run == run_id})
    assert all(count == 1 for count in calls.values()), f"dispatched more than once: {calls}"
    expected = expected_statuses(world, calls)
    status = expected_job_status(world, expected)

    run = loop.store.load(run_id)
    assert run is not None
    actual = {num: order.status for num, order in run.orders.items()}
    assert actual == expected, f"order statuses {actual}, the rules give {expected}"
    assert run.status == status, f"job {run.status}, the rules give {status}"
    finalized_at = run.job.get("finalized_at_ms")
    assert finalized_at is not None

    events = loop.events(run.trace_id)
    completed = [e for e in events if e["type"] == schema.EVENT_JOB_COMPLETED]
    assert len(completed) == 1, f"{len(completed)} job_completed events"
    assert completed[0]["epoch"] == finalized_at and completed[0]["data"] == {"status": status, "orders": actual}
    per_order = Counter((e["order_name"], e["type"]) for e in events if e["type"] != schema.EVENT_JOB_COMPLETED)
    assert all(count == 1 for count in per_order.values()), f"repeated order events: {per_order}"

    done = loop.done_marker(run_id)
    assert done == {"run_id": run_id, "status": status, "finalized_at_ms": finalized_at, "orders": actual}, done
    assert not loop.sops_key_exists(run_id), "the run's SOPS key parameter is still there"
    # The lock is completed: every later callback is a no-op.
    after = loop.deliver(run_id)
    assert after.report is not None and after.report.outcome == "already_finalized", after
    assert after.calls.count == 1, f"a callback after the finalize made {after.calls.count} calls"
    event(f"job {status}")


@pytest.fixture
def loop(aws: MotoServer) -> Iterator[LocalLoop]:
    yield LocalLoop()


@seed(SEED)
@settings(
    max_examples=SCHEDULES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedule=schedules())
def test_random_schedules_finalize_once_with_the_rules_status_and_dispatch_at_most_once(
    loop: LocalLoop, schedule: Schedule
) -> None:
    orders, steps = schedule
    world = World(loop, orders)
    loop.target.behaviour = world.behaviour
    # With a crash or a stall, the k-th call must be the same call on every replay: one dispatch thread.
    deterministic = any(action in ("crash", "stall") for action, _ in steps)
    concurrency = 1 if deterministic else orchestration.DISPATCH_CONCURRENCY
    specs = [OrderSpec(dependencies=deps, must_succeed=must) for deps, must, _, _ in orders]
    try:
        with mock.patch.object(orchestration, "DISPATCH_CONCURRENCY", concurrency):
            world.run_id = loop.insert_run(specs)
            world.pending.append(schema.JOB_ORDER_NUM)
            for action, value in steps:
                world.step(action, value)
            world.drain()
            check(world)
    finally:
        note("trace:\n  " + "\n  ".join(world.trace))
    event(f"crashes: {min(world.crashes, 3)}{'+' if world.crashes >= 3 else ''}")
    event(f"stalls: {min(world.stalls, 1)}{'+' if world.stalls >= 1 else ''}")
    event(f"orders: {next(f'{low}-{high}' for low, high in SIZES if len(orders) <= high)}")
