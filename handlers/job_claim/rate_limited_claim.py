"""Rate-limited claim request: announce unclaimed work for a pair at most once per 5 minutes.

A claim of the shared primitive on claim_requests[pair] (lease 5 min, ``expires_at`` TTL
+10 min): ACQUIRED -> send {"pair","messageId"} to the unclaimed queue; HELD -> rate limited.
It never writes ownership: only a worker takes a pair (the seed's claim function wrote it and
left messages stuck). If the send fails the claim is released and the error raised, so the
retry announces; a crash between claim and send costs one announcement (the message itself is
already on the input queue; the announcement is a nudge for an idle worker).
"""

from __future__ import annotations

import json
from typing import Any

from handlers.common.aws import client
from handlers.common.claims import Acquire, ClaimLocation, ClaimStore
from handlers.common.observability import add_count, observability
from handlers.job_claim import schema
from handlers.job_claim.settings import SERVICE, load

settings = load("rate-limited-claim", schema.ENV_CLAIM_REQUESTS_TABLE, schema.ENV_UNCLAIMED_QUEUE_URL)
logger, metrics, tracer = observability(SERVICE)
store = ClaimStore()


def request_claim(*, table: str, queue_url: str, pair: str, message_id: str, claims: ClaimStore) -> dict[str, Any]:
    now_ms = claims.now_ms()
    result = claims.acquire(
        ClaimLocation(table, {schema.PAIR: {"S": pair}}),
        lease_ms=schema.CLAIM_REQUEST_INTERVAL_SECONDS * 1000,
        attributes={
            schema.MESSAGE_ID: message_id,
            schema.TTL_ATTRIBUTE: now_ms // 1000 + schema.CLAIM_REQUEST_TTL_SECONDS,
        },
    )
    if result.status is not Acquire.ACQUIRED or result.claim is None:
        return {"sent": False, "rateLimited": True}
    try:
        client("sqs").send_message(QueueUrl=queue_url, MessageBody=json.dumps({"pair": pair, "messageId": message_id}))
    except Exception:
        claims.release(result.claim)
        raise
    return {"sent": True, "rateLimited": False}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(pair=event["pair"], message_id=event["messageId"])
    result = request_claim(
        table=settings[schema.ENV_CLAIM_REQUESTS_TABLE],
        queue_url=settings[schema.ENV_UNCLAIMED_QUEUE_URL],
        pair=event["pair"],
        message_id=event["messageId"],
        claims=store,
    )
    add_count(metrics, "claim_request_sent" if result["sent"] else "claim_request_rate_limited")
    logger.info("Claim request", extra=result)
    return result
