"""ProcessAttachments Map item: one MIME part of the email -> its own S3 object.

Key: ``attachments/<execution_name(messageId)>/<index>-<safe filename>`` in the email bucket
(encryption: the bucket default). A retry rewrites the same key with the same bytes, so the
item is idempotent. Parts over 10 MiB are refused (``AttachmentTooLargeError``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from handlers.common.aws import client
from handlers.common.observability import add_count, observability
from handlers.job_claim.email_message import attachment_part, execution_name, load, payload_bytes
from handlers.job_claim.settings import SERVICE
from handlers.job_claim.settings import load as load_settings

MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

settings = load_settings("attachments")
logger, metrics, tracer = observability(SERVICE)


class AttachmentTooLargeError(Exception):
    """The attachment is larger than MAX_ATTACHMENT_BYTES."""


def safe_filename(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE.sub("_", base).lstrip(".")[:100]
    return safe or "attachment"


def attachment_key(message_id: str, index: int, filename: str) -> str:
    return f"attachments/{execution_name(message_id)}/{index}-{safe_filename(filename)}"


def store_attachment(event: dict[str, Any]) -> dict[str, Any]:
    bucket, key, message_id = event["bucket"], event["key"], event["messageId"]
    info = event["attachment"]
    index = int(info["index"])
    if int(info.get("size") or 0) > MAX_ATTACHMENT_BYTES:
        raise AttachmentTooLargeError(f"attachment {index} is {info['size']} bytes (limit {MAX_ATTACHMENT_BYTES})")
    raw = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    part = attachment_part(load(raw), index)
    data = payload_bytes(part)
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise AttachmentTooLargeError(f"attachment {index} is {len(data)} bytes (limit {MAX_ATTACHMENT_BYTES})")
    filename = str(info.get("filename") or part.get_filename() or f"attachment-{index}")
    content_type = str(info.get("contentType") or part.get_content_type())
    target = attachment_key(message_id, index, filename)
    client("s3").put_object(Bucket=bucket, Key=target, Body=data, ContentType=content_type)
    return {
        "filename": filename,
        "contentType": content_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "s3Key": target,
    }


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(message_id=event["messageId"], attachment_index=event["attachment"]["index"])
    result = store_attachment(event)
    add_count(metrics, "attachment_stored")
    return result
