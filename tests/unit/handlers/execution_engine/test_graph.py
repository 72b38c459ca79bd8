"""graph: readiness, the dependency_failed cascade, the job status, and the linear-time bound."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from handlers.execution_engine import schema
from handlers.execution_engine.graph import Evaluation, OrderState, blocks_dependents, evaluate, job_status

Q, D, R = schema.QUEUED, schema.DISPATCHING, schema.RUNNING
OK, FAIL, TIMEOUT, CAP, DEP = (
    schema.SUCCEEDED,
    schema.FAILED,
    schema.TIMED_OUT,
    schema.HARD_CAP_REACHED,
    schema.DEPENDENCY_FAILED,
)


def s(status: str, *dependencies: str, must_succeed: bool = True) -> OrderState:
    return OrderState(status, tuple(dependencies), must_succeed)


def outcome(result: Evaluation) -> tuple[tuple[str, ...], tuple[str, ...], bool, str | None]:
    return (result.ready, result.dependency_failed, result.all_terminal, result.job_status)


# -- scenarios ------------------------------------------------------------------------------


def diamond(a: str, b: str, c: str, d: str = Q) -> dict[str, OrderState]:
    return {"0001": s(a), "0002": s(b, "0001"), "0003": s(c, "0001"), "0004": s(d, "0002", "0003")}


def test_a_fresh_diamond_starts_at_its_top() -> None:
    assert outcome(evaluate(diamond(Q, Q, Q))) == (("0001",), (), False, None)


def test_a_diamond_opens_level_by_level() -> None:
    assert outcome(evaluate(diamond(OK, Q, Q))) == (("0002", "0003"), (), False, None)
    assert outcome(evaluate(diamond(OK, OK, R))) == ((), (), False, None)
    assert outcome(evaluate(diamond(OK, OK, OK))) == (("0004",), (), False, None)
    assert outcome(evaluate(diamond(OK, OK, OK, OK))) == ((), (), True, schema.JOB_SUCCEEDED)


def test_a_failed_diamond_top_fails_everything_below_it() -> None:
    assert outcome(evaluate(diamond(FAIL, Q, Q))) == ((), ("0002", "0003", "0004"), True, schema.JOB_FAILED)


def test_one_failed_side_of_a_diamond_fails_the_bottom_while_the_other_side_runs() -> None:
    # Nothing the running side does can save the bottom: it fails now, and the job waits for 0003.
    assert outcome(evaluate(diamond(OK, FAIL, R))) == ((), ("0004",), False, None)


def test_a_failed_chain_cascades_to_its_end() -> None:
    chain = {"0001": s(TIMEOUT), "0002": s(Q, "0001"), "0003": s(Q, "0002"), "0004": s(Q, "0003")}
    assert outcome(evaluate(chain)) == ((), ("0002", "0003", "0004"), True, schema.JOB_TIMED_OUT)
    chain["0001"] = s(FAIL)
    assert outcome(evaluate(chain)) == ((), ("0002", "0003", "0004"), True, schema.JOB_FAILED)


def test_a_chain_in_flight_waits() -> None:
    chain = {"0001": s(OK), "0002": s(R, "0001"), "0003": s(Q, "0002"), "0004": s(Q, "0003")}
    assert outcome(evaluate(chain)) == ((), (), False, None)


def test_a_failure_without_must_succeed_lets_its_dependents_run() -> None:
    orders = {"0001": s(FAIL, must_succeed=False), "0002": s(Q, "0001")}
    assert outcome(evaluate(orders)) == (("0002",), (), False, None)


@pytest.mark.parametrize("status", [FAIL, TIMEOUT, CAP, DEP])
def test_every_unsuccessful_terminal_status_fails_dependents_with_must_succeed(status: str) -> None:
    orders = {"0001": s(status), "0002": s(Q, "0001")}
    assert evaluate(orders).dependency_failed == ("0002",)
    orders = {"0001": s(status, must_succeed=False), "0002": s(Q, "0001")}
    assert evaluate(orders).ready == ("0002",)


def test_the_cascade_stops_at_an_order_that_need_not_succeed() -> None:
    # 0002 fails for its dependency, but it need not succeed: 0003 runs; 0004 (behind 0001) fails.
    orders = {
        "0001": s(FAIL),
        "0002": s(Q, "0001", must_succeed=False),
        "0003": s(Q, "0002"),
        "0004": s(Q, "0001"),
    }
    assert outcome(evaluate(orders)) == (("0003",), ("0002", "0004"), False, None)


def test_the_cascade_goes_on_through_orders_that_must_succeed() -> None:
    orders = {
        "0001": s(FAIL),
        "0002": s(Q, "0001"),
        "0003": s(Q, "0002", must_succeed=False),
        "0004": s(Q, "0003"),
        "0005": s(Q, "0004"),
    }
    assert outcome(evaluate(orders)) == (("0004",), ("0002", "0003"), False, None)


def test_mixed_dependencies_and_states() -> None:
    orders = {
        "0001": s(OK),
        "0002": s(FAIL, must_succeed=False),
        "0003": s(R),
        "0004": s(Q, "0001", "0002"),  # ready: a success and a tolerated failure
        "0005": s(Q, "0001", "0003"),  # waits on a running order
        "0006": s(D, "0003"),  # dispatching: not touched
        "0007": s(Q, "0006"),  # waits on a dispatching order
        "0008": s(Q),  # no dependencies: ready
        "0009": s(R, "0010"),  # running behind a failure: not touched (it already runs)
        "0010": s(CAP),
        "0011": s(Q, "0009", "0010"),  # fails although 0009 still runs
    }
    assert outcome(evaluate(orders)) == (("0004", "0008"), ("0011",), False, None)


def test_a_repeated_dependency_counts_once_per_mention() -> None:
    orders = {"0001": s(OK), "0002": s(Q, "0001", "0001"), "0003": s(FAIL), "0004": s(Q, "0003", "0003")}
    assert outcome(evaluate(orders)) == (("0002",), ("0004",), False, None)


def test_orders_on_a_cycle_wait_without_looping() -> None:
    orders = {"0001": s(Q, "0002"), "0002": s(Q, "0001"), "0003": s(Q)}
    assert outcome(evaluate(orders)) == (("0003",), (), False, None)


def test_a_second_evaluation_after_applying_the_first_finds_nothing_new() -> None:
    orders = diamond(FAIL, Q, Q)
    first = evaluate(orders)
    applied = {
        num: s(DEP, *state.dependencies) if num in first.dependency_failed else state for num, state in orders.items()
    }
    assert outcome(evaluate(applied)) == ((), (), True, schema.JOB_FAILED)


def test_an_empty_run_is_trivially_done() -> None:
    assert outcome(evaluate({})) == ((), (), True, schema.JOB_SUCCEEDED)


def test_an_unknown_status_or_dependency_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown status 'done'"):
        evaluate({"0001": s("done")})
    with pytest.raises(ValueError, match="0001: depends on 0009"):
        evaluate({"0001": s(Q, "0009")})


def test_blocks_dependents() -> None:
    assert blocks_dependents(s(FAIL)) and blocks_dependents(s(DEP)) and blocks_dependents(s(CAP))
    assert not blocks_dependents(s(OK)) and not blocks_dependents(s(R)) and not blocks_dependents(s(Q))
    assert not blocks_dependents(s(FAIL, must_succeed=False))


# -- the job status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([OK, OK], schema.JOB_SUCCEEDED),
        ([OK, FAIL], schema.JOB_FAILED),
        ([OK, DEP], schema.JOB_FAILED),
        ([OK, TIMEOUT], schema.JOB_TIMED_OUT),
        ([OK, CAP], schema.JOB_TIMED_OUT),
        ([FAIL, TIMEOUT, DEP], schema.JOB_TIMED_OUT),
        ([CAP, FAIL], schema.JOB_TIMED_OUT),
        ([DEP, FAIL], schema.JOB_FAILED),
    ],
)
def test_the_job_status_precedence(statuses: list[str], expected: str) -> None:
    orders = {schema.order_num(i + 1): s(status) for i, status in enumerate(statuses)}
    assert job_status(orders) == expected
    assert outcome(evaluate(orders)) == ((), (), True, expected)


def test_only_orders_that_must_succeed_decide_the_job() -> None:
    orders = {"0001": s(OK), "0002": s(TIMEOUT, must_succeed=False), "0003": s(FAIL, must_succeed=False)}
    assert evaluate(orders).job_status == schema.JOB_SUCCEEDED
    orders["0004"] = s(FAIL)
    assert evaluate(orders).job_status == schema.JOB_FAILED


def test_the_job_status_counts_the_orders_failed_in_this_evaluation() -> None:
    orders = {"0001": s(FAIL, must_succeed=False), "0002": s(Q, "0001"), "0003": s(TIMEOUT, must_succeed=False)}
    assert evaluate(orders).job_status is None  # 0002 is ready, not terminal
    orders = {"0001": s(FAIL), "0002": s(Q, "0001"), "0003": s(OK)}
    assert outcome(evaluate(orders)) == ((), ("0002",), True, schema.JOB_FAILED)
    orders = {"0001": s(FAIL), "0002": s(Q, "0001", must_succeed=False)}
    assert outcome(evaluate(orders)) == ((), ("0002",), True, schema.JOB_FAILED)  # 0001 decides


def test_no_job_status_while_an_order_is_in_flight() -> None:
    for status in (Q, D, R):
        assert evaluate({"0001": s(FAIL), "0002": s(status)}).job_status is None


# -- property: the propagation equals the naive fixed point -----------------------------------


def naive(orders: Mapping[str, OrderState]) -> tuple[tuple[str, ...], tuple[str, ...], bool, str | None]:
    """Sweep until nothing changes (quadratic, obviously right), then read the answer off."""
    status = {num: state.status for num, state in orders.items()}

    def bad(num: str) -> bool:
        return status[num] in {FAIL, TIMEOUT, CAP, DEP} and orders[num].must_succeed

    def fine(num: str) -> bool:
        return status[num] == OK or (status[num] in {FAIL, TIMEOUT, CAP, DEP} and not orders[num].must_succeed)

    changed = True
    while changed:
        changed = False
        for num, state in orders.items():
            if status[num] == Q and any(bad(dependency) for dependency in state.dependencies):
                status[num] = DEP
                changed = True
    ready = tuple(num for num, state in orders.items() if status[num] == Q and all(map(fine, state.dependencies)))
    failed = tuple(num for num in orders if status[num] == DEP and orders[num].status == Q)
    done = all(value in {OK, FAIL, TIMEOUT, CAP, DEP} for value in status.values())
    verdict = None
    if done:
        counted = [status[num] for num in orders if orders[num].must_succeed]
        verdict = (
            schema.JOB_TIMED_OUT
            if TIMEOUT in counted or CAP in counted
            else schema.JOB_FAILED
            if FAIL in counted or DEP in counted
            else schema.JOB_SUCCEEDED
        )
    return ready, failed, done, verdict


STATUSES = sorted(schema.ORDER_STATUSES)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, OrderState]:
    """Random DAGs of up to 30 orders; the numbering is shuffled so edges point both ways."""
    size = draw(st.integers(min_value=1, max_value=30))
    labels = draw(st.permutations([schema.order_num(i + 1) for i in range(size)]))
    # Biased towards queued so that cascades and readiness actually happen.
    statuses = draw(st.lists(st.sampled_from([Q, Q, *STATUSES]), min_size=size, max_size=size))
    musts = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    # Order i depends only on orders before it (d % i < i): acyclic by construction.
    picks = draw(st.lists(st.lists(st.integers(0, 29), max_size=4), min_size=size, max_size=size))
    orders = {
        labels[i]: OrderState(statuses[i], tuple(labels[d % i] for d in picks[i]) if i else (), musts[i])
        for i in range(size)
    }
    return dict(sorted(orders.items()))


@seed(20261203)
@settings(max_examples=200, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(orders=dags())
def test_the_propagation_equals_the_naive_fixed_point(orders: dict[str, OrderState]) -> None:
    assert outcome(evaluate(orders)) == naive(orders)


def test_the_property_sees_cascades_and_finished_jobs() -> None:
    """The generator is worth its examples: a fair share of them cascade, or finish the job."""
    rng = random.Random(7)
    cascades = finished = 0
    for _ in range(300):
        size = rng.randint(1, 30)
        orders = {
            schema.order_num(i + 1): OrderState(
                rng.choice([Q, Q, *STATUSES]),
                tuple(schema.order_num(rng.randint(1, i)) for _ in range(rng.randint(0, 3))) if i else (),
                rng.random() < 0.5,
            )
            for i in range(size)
        }
        result = evaluate(orders)
        assert outcome(result) == naive(orders)
        cascades += len(result.dependency_failed) > 1
        finished += result.all_terminal
    assert cascades > 20 and finished > 5


# -- linear time ----------------------------------------------------------------------------


class CountingDependencies(tuple[str, ...]):
    """A dependency tuple that counts every element handed out by iteration."""

    reads = 0

    def __iter__(self) -> Iterator[str]:
        for item in super().__iter__():
            CountingDependencies.reads += 1
            yield item


class CountingOrders(Mapping[str, OrderState]):
    """The run's orders, counting every key iterated and every lookup."""

    def __init__(self, orders: dict[str, OrderState]) -> None:
        self._orders = orders
        self.reads = 0

    def __getitem__(self, key: str) -> OrderState:
        self.reads += 1
        return self._orders[key]

    def __iter__(self) -> Iterator[str]:
        for key in self._orders:
            self.reads += 1
            yield key

    def __len__(self) -> int:
        return len(self._orders)

    def __contains__(self, key: object) -> bool:
        self.reads += 1
        return key in self._orders


def layered(levels: int, width: int, top: str, fanin: int = 2) -> dict[str, OrderState]:
    """``levels`` x ``width`` orders, each depending on ``fanin`` of the level above (the benchmark's shape)."""
    rng = random.Random(levels * width)
    orders: dict[str, OrderState] = {}
    for level in range(levels):
        for column in range(width):
            position = level * width + column + 1
            above = range((level - 1) * width + 1, level * width + 1) if level else range(0)
            dependencies = tuple(schema.order_num(p) for p in rng.sample(list(above), min(fanin, len(above))))
            orders[schema.order_num(position)] = OrderState(
                top if level == 0 else Q, CountingDependencies(dependencies), True
            )
    return orders


def measured(orders: dict[str, OrderState]) -> tuple[Evaluation, int, int]:
    """(evaluation, reads of the instrumented structures, orders + edges)."""
    CountingDependencies.reads = 0
    counting = CountingOrders(orders)
    result = evaluate(counting)
    size = len(orders) + sum(len(state.dependencies) for state in orders.values())
    return result, counting.reads + CountingDependencies.reads, size


@pytest.mark.parametrize(
    ("top", "expected_failed"),
    [
        (FAIL, 1800),  # the worst case: the whole graph below the first level cascades
        (OK, 0),  # the second level becomes ready
        (Q, 0),  # only the first level is ready
    ],
)
def test_two_thousand_orders_take_a_bounded_number_of_steps(top: str, expected_failed: int) -> None:
    small, small_reads, small_size = measured(layered(10, 20, top))
    large, large_reads, large_size = measured(layered(10, 200, top))
    assert len(large.dependency_failed) == expected_failed
    assert large_size == 2000 + 2 * 1800
    # The module's own counter: each order taken once, each edge followed once.
    assert small.steps <= small_size and large.steps <= large_size
    # Everything the evaluation reads, counted from outside: a constant per order and edge...
    assert small_reads <= 8 * small_size and large_reads <= 8 * large_size
    # ...so ten times the graph is ten times the reads (a quadratic pass would be ~100x).
    assert large_reads <= 11 * small_reads


def test_the_cascade_worst_case_reads_each_edge_a_constant_number_of_times() -> None:
    """A long chain: a sweeping fixed point would take one sweep per order (2,000 x 2,000)."""
    chain = {
        schema.order_num(i + 1): OrderState(
            FAIL if i == 0 else Q, CountingDependencies((schema.order_num(i),) if i else ())
        )
        for i in range(2000)
    }
    # Worst order for a sweep: the chain listed from its end.
    result, reads, size = measured(dict(reversed(chain.items())))
    assert len(result.dependency_failed) == 1999 and result.job_status == schema.JOB_FAILED
    assert result.steps <= size and reads <= 8 * size
