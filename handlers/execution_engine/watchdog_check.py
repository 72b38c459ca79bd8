"""watchdog_check: one step of an order's watchdog (Step Functions: CheckResult -> IsDone -> Wait).

Input (and output, with ``done`` and ``wait_seconds`` added): ``{run_id, order_num, timeout,
started_at_ms, dispatch_generation}``. The order's result.json exists -> done. No result after
``timeout`` seconds -> write a ``timed_out`` result; after 2 x ``timeout`` (the first check came
late, e.g. the state machine was throttled) -> the ``hard_cap_reached`` result. Both are written with
``If-None-Match: *``, so a worker that reports at the same moment keeps its result if it was first,
and both statuses are terminal for the orchestrator. Otherwise wait 50-70 s (jittered, so the
watchdogs of a large job do not poll S3 in lockstep), never past the timeout by more than that.
"""

from __future__ import annotations

import random
from typing import Any

from handlers.common.aws import client
from handlers.common.claims import system_clock_ms
from handlers.common.observability import add_count, observability
from handlers.execution_engine import schema
from handlers.execution_engine.results import OrderResult, result_exists, write_result_once
from handlers.execution_engine.settings import SERVICE, load

settings = load("watchdog check", schema.ENV_INTERNAL_BUCKET)
logger, metrics, tracer = observability(SERVICE)

WAIT_MIN_SECONDS = 50
WAIT_MAX_SECONDS = 70


def check(event: dict[str, Any], *, bucket: str, now_ms: int, rng: random.Random) -> dict[str, Any]:
    run_id, num = str(event[schema.RUN_ID]), str(event[schema.ORDER_NUM])
    if not (schema.is_run_id(run_id) and schema.is_order_num(num)):
        raise ValueError(f"watchdog input names no order: run_id={run_id!r} order_num={num!r}")
    timeout_ms = int(event["timeout"]) * 1000
    elapsed_ms = now_ms - int(event["started_at_ms"])
    key = schema.callback_key(run_id, num)
    if result_exists(client("s3"), bucket, key):
        return {**event, "done": True, "wait_seconds": 0, "outcome": "result_found"}
    if elapsed_ms > timeout_ms:
        hard_cap = elapsed_ms > 2 * timeout_ms
        status = schema.HARD_CAP_REACHED if hard_cap else schema.TIMED_OUT
        reason = f"no result {elapsed_ms // 1000} s after dispatch (timeout {timeout_ms // 1000} s)"
        won = write_result_once(
            client("s3"), bucket, key, OrderResult(status=status, reason=reason, written_by="watchdog")
        )
        if won:
            add_count(metrics, schema.METRIC_HARD_CAP_REACHED if hard_cap else schema.METRIC_ORDERS_TIMED_OUT)
            logger.warning("Order declared %s", status, extra={"run_id": run_id, "order_num": num, "reason": reason})
        return {**event, "done": True, "wait_seconds": 0, "outcome": status if won else "result_found"}
    wait = rng.randint(WAIT_MIN_SECONDS, WAIT_MAX_SECONDS)
    return {**event, "done": False, "wait_seconds": wait, "outcome": "waiting"}


_rng = random.Random()


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return check(event, bucket=settings[schema.ENV_INTERNAL_BUCKET], now_ms=system_clock_ms(), rng=_rng)
