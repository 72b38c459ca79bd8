"""ExecutionEngine benchmark: the orchestrator's cost per callback on a job of 200 no-op orders, and of 2,000.

Jobs of ``levels x width`` orders: level 1 has no dependencies, every later order depends on two
orders of the level above (``i`` and ``i + 1`` mod width). 200 orders = 10 levels x 20 (360
edges); 2,000 orders = 100 levels x 20 (3,960 edges). The 2,000-order job keeps the width of the
200-order one: every pass then has the same work in flight (about 20 results to read and 20
orders to dispatch), so what grows between the two is only the run itself (orders + edges, x10.6),
which is what the linear-evaluation goal is about. 10 levels x 200 would also multiply the
per-pass dispatch and result reads by ten and measure those instead.

Each job goes through the local loop (tests/support/execution_engine_loop.py): a real
``Orchestrator`` (RunStore, ClaimStore, boto3 clients, the real DISPATCH_CONCURRENCY) on a moto
server in its own process (the test harness's faithful server: its CPU must not share this
process's GIL), the run inserted directly, and the Lambda target replaced by a recording target
whose worker succeeds at once: it writes its ``succeeded`` result.json when it is called, and its
callback is delivered right after the pass that dispatched it (the driver plays S3 -> Lambda, one
invocation per result.json, one after the other; the init result ``0000`` first).

Printed per job: orchestrator invocations (passes: one per callback), DynamoDB calls per callback
(counted by a botocore ``before-call`` hook on the orchestrator's DynamoDB client, the loop's
``CallGate``) and per pass that evaluated the run, and evaluation time per callback
(``PassReport.evaluation_seconds``, the ``graph.evaluate`` call, over the passes that evaluated;
a callback that comes after the job is finalized is a one-call no-op). Then the ratio 2,000 vs
200 of the evaluation time per callback next to the ratio of orders + edges. Goals: evaluation
time per callback grows at most linearly in orders + edges (ratio <= that ratio, with a 1.5x
allowance for the larger job's cache misses), and orchestrator invocations <= orders + 1 (the
init result). Exit status 1 when a goal is missed.

The goal is judged on the fastest evaluation of each job (the least disturbed one, as ``timeit``
does), and the median ratio is printed next to it. On a loaded 2-core machine the median is
preemption, not evaluation: a 2,000-order evaluation takes ~4 ms, longer than a scheduler time
slice, so with other processes runnable most samples include someone else's slice (measured
here at load ~5: median 22 ms, fastest 4.5 ms, the same with the garbage collector off), while
a 200-order one (~0.3 ms) mostly fits in one.

    python -m benchmarks.execution_engine_bench [--small-levels 10] [--large-levels 100] [--width 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

INVOCATIONS_CONSTANT = 1  # the init result's callback
LINEAR_ALLOWANCE = 1.5
SMALL_REPEATS = 3  # the 200-order job evaluates ~11 times per run: three runs for a steadier median


@contextlib.contextmanager
def moto_server_process() -> Iterator[str]:
    from tests.support.moto_server import start_moto_server

    with contextlib.contextmanager(start_moto_server)(own_process=True) as server:
        yield server.endpoint


def aws_environment(endpoint: str) -> None:
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    from handlers.common.aws import reset_clients

    reset_clients()


def layered_job(levels: int, width: int) -> list[Any]:
    """``levels x width`` orders; each below level 1 depends on two of the level above."""
    from tests.support.execution_engine_loop import OrderSpec

    orders = []
    for level in range(levels):
        for i in range(width):
            if level == 0:
                orders.append(OrderSpec())
            else:
                above = (level - 1) * width + 1  # 1-based position of the level above's first order
                orders.append(OrderSpec(dependencies=tuple(sorted({above + i, above + (i + 1) % width}))))
    return orders


@dataclass
class JobFigures:
    orders: int
    edges: int
    invocations: int
    evaluating_passes: int
    dynamodb_calls: int
    dynamodb_calls_evaluating: int
    evaluation_seconds: list[float]
    wall_seconds: float

    @property
    def size(self) -> int:
        return self.orders + self.edges


def run_job(loop: Any, levels: int, width: int) -> JobFigures:
    from handlers.execution_engine import schema

    orders = layered_job(levels, width)
    callbacks: deque[str] = deque()

    def worker_succeeds_at_once(run: Any, order: Any) -> None:
        loop.write_result(run.run_id, order.num, schema.SUCCEEDED, log="no-op")
        callbacks.append(order.num)

    loop.target.behaviour = worker_succeeds_at_once
    run_id = loop.insert_run(orders)
    callbacks.append(schema.JOB_ORDER_NUM)
    invocations = evaluating = ddb_calls = ddb_evaluating = 0
    evaluations: list[float] = []
    started = time.perf_counter()
    while callbacks:
        callbacks.popleft()  # every callback of the run triggers the same pass
        delivery = loop.deliver(run_id)
        invocations += 1
        report = delivery.report
        if report is None:
            raise RuntimeError(f"a pass failed: {delivery}")
        calls = delivery.calls.by_service["dynamodb"]
        ddb_calls += calls
        if report.outcome in ("processed", "finalized"):
            evaluating += 1
            ddb_evaluating += calls
            evaluations.append(report.evaluation_seconds)
    wall = time.perf_counter() - started
    done = loop.done_marker(run_id)
    if done is None or done["status"] != schema.JOB_SUCCEEDED:
        raise RuntimeError(f"the job did not succeed: {done}")
    dispatched = {num: count for (run, num), count in loop.target.calls.items() if run == run_id}
    if len(dispatched) != len(orders) or set(dispatched.values()) != {1}:
        raise RuntimeError("not every order was dispatched exactly once")
    return JobFigures(
        orders=len(orders),
        edges=sum(len(order.dependencies) for order in orders),
        invocations=invocations,
        evaluating_passes=evaluating,
        dynamodb_calls=ddb_calls,
        dynamodb_calls_evaluating=ddb_evaluating,
        evaluation_seconds=evaluations,
        wall_seconds=wall,
    )


def describe(label: str, jobs: list[JobFigures]) -> tuple[float, float, list[str]]:
    first = jobs[0]
    evaluations = [seconds for job in jobs for seconds in job.evaluation_seconds]
    invocations = sum(job.invocations for job in jobs) / len(jobs)
    passes = sum(job.evaluating_passes for job in jobs) / len(jobs)
    ddb = sum(job.dynamodb_calls for job in jobs) / sum(job.invocations for job in jobs)
    ddb_evaluating = sum(job.dynamodb_calls_evaluating for job in jobs) / sum(job.evaluating_passes for job in jobs)
    median = statistics.median(evaluations)
    met = all(job.invocations <= job.orders + INVOCATIONS_CONSTANT for job in jobs)
    runs = f" (x{len(jobs)} runs)" if len(jobs) > 1 else ""
    return (
        median,
        min(evaluations),
        [
            f"{label}: {first.orders} orders, {first.edges} edges (orders + edges = {first.size}){runs}, "
            f"{sum(job.wall_seconds for job in jobs) / len(jobs):.1f} s per job",
            f"  orchestrator invocations: {invocations:.0f} per job (goal <= orders + {INVOCATIONS_CONSTANT} = "
            f"{first.orders + INVOCATIONS_CONSTANT}): {'PASS' if met else 'FAIL'}; {passes:.0f} of them evaluated the "
            f"run, the others came after it was finalized (no-ops)",
            f"  DynamoDB calls per callback: {ddb:.1f} (per pass that evaluated: {ddb_evaluating:.1f})",
            f"  evaluation time per callback (passes that evaluated): fastest {min(evaluations) * 1e3:.3f} ms, "
            f"median {median * 1e3:.3f} ms, mean {statistics.fmean(evaluations) * 1e3:.3f} ms, "
            f"max {max(evaluations) * 1e3:.3f} ms",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small-levels", type=int, default=10)
    parser.add_argument("--large-levels", type=int, default=100)
    parser.add_argument("--width", type=int, default=20)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    with moto_server_process() as endpoint:
        aws_environment(endpoint)
        from tests.support.execution_engine_loop import LocalLoop

        loop = LocalLoop()
        run_job(loop, 2, args.width)  # warm-up: imports, clients, connection pools
        small = [run_job(loop, args.small_levels, args.width) for _ in range(SMALL_REPEATS)]
        small_median, small_fastest, small_lines = describe("small job", small)
        print("\n".join(small_lines), flush=True)
        large = [run_job(loop, args.large_levels, args.width)]
        large_median, large_fastest, large_lines = describe("large job", large)
        print("\n".join(large_lines), flush=True)
    size_ratio = large[0].size / small[0].size
    time_ratio = large_fastest / small_fastest
    median_ratio = large_median / small_median
    linear = time_ratio <= size_ratio * LINEAR_ALLOWANCE
    invocations = all(job.invocations <= job.orders + INVOCATIONS_CONSTANT for job in [*small, *large])
    print(
        f"ratio {large[0].orders} vs {small[0].orders} orders: evaluation time per callback x{time_ratio:.2f} "
        f"(fastest; median x{median_ratio:.2f}, see the module docstring), orders + edges x{size_ratio:.2f}"
    )
    print(
        f"goal: evaluation time per callback grows at most linearly in orders + edges (x{time_ratio:.2f} <= "
        f"x{size_ratio:.2f} x {LINEAR_ALLOWANCE} allowance): {'PASS' if linear else 'FAIL'}"
    )
    print(f"goal: orchestrator invocations <= orders + {INVOCATIONS_CONSTANT}: {'PASS' if invocations else 'FAIL'}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0 if linear and invocations else 1


if __name__ == "__main__":
    sys.exit(main())
