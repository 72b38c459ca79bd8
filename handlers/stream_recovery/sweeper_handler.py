"""StreamRecovery sweeper Lambda (EventBridge Scheduler, every 5 minutes): one sweep per run.

Returns the spec's counts; a run with errors is logged at error (the function's own error
metric stays for a broken deployment), so the sweeper-errors alarm can watch the log metric.
"""

from __future__ import annotations

import time
from typing import Any

from handlers.common.observability import add_count, observability
from handlers.stream_recovery.dispatch import Redispatcher
from handlers.stream_recovery.settings import SERVICE, load_settings
from handlers.stream_recovery.sweeper import Sweeper

settings = load_settings()
logger, metrics, tracer = observability(SERVICE)
_claim_expiry_ms = settings.claim_expiry_seconds * 1000
sweeper = Sweeper(
    redispatcher=Redispatcher(tables=settings.tables, policy=settings.policy, claim_expiry_ms=_claim_expiry_ms),
    pending_dispatches_table=settings.tables.pending_dispatches,
    deliveries_table=settings.tables.deliveries,
    claim_expiry_ms=_claim_expiry_ms,
)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    report = sweeper.sweep(deadline=time.monotonic() + context.get_remaining_time_in_millis() / 1000).as_dict()
    if report["errors"]:
        logger.error("Sweep finished with errors", extra=report)
        add_count(metrics, "sweep_errors", len(report["errors"]))
    else:
        logger.info("Sweep finished", extra=report)
    return report
