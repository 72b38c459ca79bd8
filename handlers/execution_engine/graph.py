"""Readiness of a run's orders: which to dispatch, which fail for their dependencies, and the job status.

Pure logic, no I/O. The orchestrator reads every order of a run (status, dependency nums,
must_succeed), calls ``evaluate`` once per pass, then dispatches ``ready``, writes
``dependency_failed`` and, when ``all_terminal``, finalizes the job with ``job_status``.

Rules (the fixed point of these, reached in one pass):

- A terminal order (``schema.TERMINAL_ORDER_STATUSES``) *blocks* its dependents when it did not
  succeed and it ``must_succeed``; a terminal order that succeeded, or that failed without
  ``must_succeed``, *satisfies* them.
- A ``queued`` order with a blocking dependency is ``dependency_failed`` -- even while its other
  dependencies still run, since nothing they do can save it. Such an order is terminal and
  unsuccessful, so whether it in turn fails ITS dependents is its own ``must_succeed``, exactly
  like any failed order: the cascade goes as far as ``must_succeed`` carries it, and no further.
- A ``queued`` order whose dependencies are all terminal and all satisfy it is ``ready``.
- Anything else waits: a ``queued`` order with a dependency that is queued, ``dispatching`` or
  ``running``. Orders that are ``dispatching`` or ``running`` are never touched here; they block
  their dependents until their result arrives.

Job status, once every order is terminal (after applying ``dependency_failed``), counting only
the orders that ``must_succeed`` (an optional order never decides the job):
any ``timed_out`` or ``hard_cap_reached`` -> ``schema.JOB_TIMED_OUT``; else any ``failed`` or
``dependency_failed`` -> ``schema.JOB_FAILED``; else ``schema.JOB_SUCCEEDED``. A time-out wins
over a failure because it is the one an operator must act on differently (a stuck worker, a
target that never reported), and a cascade of failures behind it would hide it. While any order
is not terminal the job status is None.

Cost: O(orders + edges) -- one Kahn-style propagation. Every terminal order (given, or failed in
this pass) is taken from the work list once and looks at each of its dependents once; a dependent
counts down its unresolved dependencies and becomes ready at zero. No repeated sweeps.
``Evaluation.steps`` counts those visits (orders taken plus edges followed) so a test can check
the bound without a clock.

The runs this sees were validated at init, so they have no dependency cycle; an order on a cycle
nevertheless costs no more than any other -- it simply waits, as no propagation reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from handlers.execution_engine import schema

_TIMEOUT_STATUSES = frozenset({schema.TIMED_OUT, schema.HARD_CAP_REACHED})
_FAILURE_STATUSES = frozenset({schema.FAILED, schema.DEPENDENCY_FAILED})


@dataclass(frozen=True)
class OrderState:
    """What evaluation needs of one order: its status, its dependencies (order nums), must_succeed."""

    status: str
    dependencies: tuple[str, ...] = ()
    must_succeed: bool = True


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one pass. Order nums come in the iteration order of the input mapping."""

    ready: tuple[str, ...]
    dependency_failed: tuple[str, ...]
    all_terminal: bool
    job_status: str | None
    # Orders taken from the work list + dependency edges followed: the linear-time witness.
    steps: int = field(default=0, compare=False)


def blocks_dependents(state: OrderState) -> bool:
    """True when a terminal ``state`` fails the queued orders that depend on it."""
    return state.status in schema.TERMINAL_ORDER_STATUSES and state.status != schema.SUCCEEDED and state.must_succeed


def _check(orders: Mapping[str, OrderState]) -> None:
    """Refuse an unknown status or a dependency on an order the run does not have.

    Both mean the orders table or the caller is wrong; guessing would dispatch or fail orders
    on data nobody wrote, so this is a loud ValueError, not an answer.
    """
    for num, state in orders.items():
        if state.status not in schema.ORDER_STATUSES:
            raise ValueError(f"order {num}: unknown status {state.status!r}")
        for dependency in state.dependencies:
            if dependency not in orders:
                raise ValueError(f"order {num}: depends on {dependency}, which is not an order of this run")


def job_status(statuses: Mapping[str, OrderState]) -> str:
    """The status of a job whose orders are all terminal (the precedence in the module docstring)."""
    counted = [state.status for state in statuses.values() if state.must_succeed]
    if any(status in _TIMEOUT_STATUSES for status in counted):
        return schema.JOB_TIMED_OUT
    if any(status in _FAILURE_STATUSES for status in counted):
        return schema.JOB_FAILED
    return schema.JOB_SUCCEEDED


def evaluate(orders: Mapping[str, OrderState]) -> Evaluation:
    """One evaluation pass over a run's orders (num -> state); see the module docstring."""
    _check(orders)
    dependents: dict[str, list[str]] = {}  # reverse edges; a repeated dependency is a repeated edge
    unresolved: dict[str, int] = {}  # a queued order's dependencies not yet known to satisfy it
    ready: set[str] = set()
    work: list[str] = []  # terminal orders whose dependents have not been looked at yet
    for num, state in orders.items():
        for dependency in state.dependencies:
            dependents.setdefault(dependency, []).append(num)
        unresolved[num] = len(state.dependencies)
        if state.status in schema.TERMINAL_ORDER_STATUSES:
            work.append(num)
        elif state.status == schema.QUEUED and not state.dependencies:
            ready.add(num)
    failed_now: set[str] = set()
    steps = 0
    while work:
        num = work.pop()
        steps += 1
        state = orders[num]
        blocking = state.must_succeed if num in failed_now else blocks_dependents(state)
        for dependent in dependents.get(num, ()):
            steps += 1
            if dependent in failed_now or orders[dependent].status != schema.QUEUED:
                continue
            if blocking:
                failed_now.add(dependent)
                work.append(dependent)
                continue
            unresolved[dependent] -= 1
            if unresolved[dependent] == 0:
                ready.add(dependent)
    return _evaluation(orders, ready, failed_now, steps)


def _evaluation(orders: Mapping[str, OrderState], ready: set[str], failed_now: set[str], steps: int) -> Evaluation:
    after = {
        num: OrderState(schema.DEPENDENCY_FAILED, state.dependencies, state.must_succeed)
        if num in failed_now
        else state
        for num, state in orders.items()
    }
    all_terminal = all(state.status in schema.TERMINAL_ORDER_STATUSES for state in after.values())
    return Evaluation(
        ready=tuple(num for num in orders if num in ready),
        dependency_failed=tuple(num for num in orders if num in failed_now),
        all_terminal=all_terminal,
        job_status=job_status(after) if all_terminal else None,
        steps=steps,
    )
