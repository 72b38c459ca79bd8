"""Orchestrator: S3 ObjectCreated of ``tmp/callbacks/runs/<run>/<num>/result.json``.

Every record of the event counts (the seed took only the first); records of one run are served by
one pass. A run whose lock stays held past the invocation's deadline fails the invocation, so
Lambda's asynchronous retries (and then the on-failure queue) keep the callback: nothing is dropped
(orchestration.py). A key that is not a result.json of a run is logged and skipped: it names no
run to process, and retrying it could never succeed.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote_plus

from handlers.common.aws import client
from handlers.common.claims import ClaimStore
from handlers.common.observability import add_count, observability
from handlers.execution_engine import schema
from handlers.execution_engine.orchestration import LambdaTarget, Orchestrator
from handlers.execution_engine.run_store import RunStore
from handlers.execution_engine.settings import SERVICE, load

settings = load(
    "orchestrator",
    schema.ENV_ORDERS_TABLE,
    schema.ENV_ORDER_EVENTS_TABLE,
    schema.ENV_LOCKS_TABLE,
    schema.ENV_INTERNAL_BUCKET,
    schema.ENV_DONE_BUCKET,
    schema.ENV_WORKER_FUNCTION,
    schema.ENV_WATCHDOG_STATE_MACHINE_ARN,
)
logger, metrics, tracer = observability(SERVICE)
claims = ClaimStore()
orchestrator = Orchestrator(
    store=RunStore(
        orders_table=settings[schema.ENV_ORDERS_TABLE],
        events_table=settings[schema.ENV_ORDER_EVENTS_TABLE],
        clock_ms=claims.now_ms,
    ),
    claims=claims,
    locks_table=settings[schema.ENV_LOCKS_TABLE],
    internal_bucket=settings[schema.ENV_INTERNAL_BUCKET],
    done_bucket=settings[schema.ENV_DONE_BUCKET],
    watchdog_state_machine_arn=settings[schema.ENV_WATCHDOG_STATE_MACHINE_ARN],
    targets={
        schema.TARGET_LAMBDA: LambdaTarget(
            function_name=settings[schema.ENV_WORKER_FUNCTION],
            internal_bucket=settings[schema.ENV_INTERNAL_BUCKET],
            lambda_client=client("lambda"),
        )
    },
    s3=client("s3"),
    stepfunctions=client("stepfunctions"),
    ssm=client("ssm"),
    log=lambda message, **fields: logger.warning(message, extra=fields),
)

# Seconds kept at the end of an invocation so a failure is reported before Lambda's timeout.
DEADLINE_MARGIN_SECONDS = 5.0


def runs_of(event: dict[str, Any]) -> list[str]:
    """The distinct runs named by the event's records, in order of first appearance."""
    runs: list[str] = []
    for record in event.get("Records", []):
        key = unquote_plus(record.get("s3", {}).get("object", {}).get("key", ""))  # S3 URL-encodes keys
        parsed = schema.parse_callback_key(key)
        if parsed is None:
            logger.error("Not a result.json of a run: skipped", extra={"key": key})
            add_count(metrics, "callbacks_skipped")
            continue
        if parsed[0] not in runs:
            runs.append(parsed[0])
    return runs


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS
    reports = []
    for run_id in runs_of(event):
        logger.append_keys(run_id=run_id)
        report = orchestrator.handle(run_id, deadline_monotonic=deadline)
        logger.info("Orchestration pass", extra={"pass": vars(report)})
        add_count(metrics, f"pass_{report.outcome}")
        reports.append(vars(report))
    return {"passes": reports}
