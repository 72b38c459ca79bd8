"""ParseEmail state: the stored email -> the fields the rest of the flow routes on.

``UnroutableEmailError`` / ``MalformedEmailError`` propagate under their class names, which are
the Step Functions error names the state machine catches (DLQ path).
"""

from __future__ import annotations

from typing import Any

from handlers.common.aws import client
from handlers.common.observability import add_count, observability
from handlers.job_claim.email_message import MalformedEmailError, UnroutableEmailError, parse
from handlers.job_claim.settings import SERVICE, load

settings = load("parse-email")
logger, metrics, tracer = observability(SERVICE)


def parse_stored(bucket: str, key: str, message_id: str | None, domain: str | None) -> dict[str, Any]:
    raw = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    email = parse(raw, domain=domain)
    return {
        "messageId": message_id or email.message_id,
        "project": email.project,
        "user": email.user,
        "pair": email.pair,
        "threadId": email.thread_id,
        "subject": email.subject,
        "from": email.sender,
        "body": email.body_text,
        "attachments": [
            {"index": a.index, "filename": a.filename, "contentType": a.content_type, "size": a.size}
            for a in email.attachments
        ],
        "bucket": bucket,
        "key": key,
    }


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(bucket=event["bucket"], key=event["key"], message_id=event.get("messageId"))
    try:
        result = parse_stored(event["bucket"], event["key"], event.get("messageId"), settings.email_domain)
    except (UnroutableEmailError, MalformedEmailError) as exc:
        logger.warning("Email rejected", extra={"reason": str(exc), "error": type(exc).__name__})
        add_count(metrics, "email_rejected")
        raise
    add_count(metrics, "email_parsed")
    return result
