"""send-interrupt Lambda: {"pair","containerId","interruptedMessageId","byMessageId"} -> the topic."""

from __future__ import annotations

from typing import Any

from handlers.common.observability import add_count, observability
from handlers.job_claim import schema
from handlers.job_claim.interrupts import send_interrupt
from handlers.job_claim.settings import SERVICE, load

settings = load("send-interrupt", schema.ENV_INTERRUPTS_TOPIC_ARN)
logger, metrics, tracer = observability(SERVICE)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    sns_id = send_interrupt(
        topic_arn=settings[schema.ENV_INTERRUPTS_TOPIC_ARN],
        pair=event["pair"],
        container_id=event["containerId"],
        interrupted_message_id=event["interruptedMessageId"],
        by_message_id=event["byMessageId"],
    )
    logger.info("Interrupt sent", extra={"container_id": event["containerId"], "pair": event["pair"]})
    add_count(metrics, "interrupt_sent")
    return {"sent": True, "snsMessageId": sns_id}
