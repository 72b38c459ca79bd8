"""result.json: the one record of an order's outcome (schema v1), first writer wins.

The worker, the watchdog and the orchestrator (recording a target call that failed) all write an
order's result to the same key with ``If-None-Match: *``; S3 answers 412 to every write after
the first, so an order cannot end "succeeded" after the watchdog declared it timed out (the
seed's last-writer-wins could). The orchestrator trusts only what is stored there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from handlers.execution_engine import schema

WRITERS = frozenset({"init", "worker", "watchdog", "orchestrator"})


class MalformedResultError(ValueError):
    """A result.json that is not schema v1: the order cannot be judged from it."""


@dataclass(frozen=True)
class OrderResult:
    status: str
    log: str = ""
    reason: str | None = None
    written_by: str = "worker"

    def document(self) -> bytes:
        body: dict[str, Any] = {
            "schema_version": schema.SCHEMA_VERSION,
            "status": self.status,
            "log": self.log,
            "written_by": self.written_by,
        }
        if self.reason:
            body["reason"] = self.reason
        return json.dumps(body).encode()


def parse_result(data: bytes) -> OrderResult:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedResultError(f"result.json is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedResultError("result.json is not a JSON object")
    if body.get("schema_version") != schema.SCHEMA_VERSION:
        raise MalformedResultError(f"result.json schema_version must be {schema.SCHEMA_VERSION!r}")
    status = body.get("status")
    if status not in schema.RESULT_STATUSES:
        raise MalformedResultError(
            f"result.json status must be one of {sorted(schema.RESULT_STATUSES)}, got {status!r}"
        )
    log, reason, writer = body.get("log", ""), body.get("reason"), body.get("written_by", "worker")
    if not isinstance(log, str) or (reason is not None and not isinstance(reason, str)) or writer not in WRITERS:
        raise MalformedResultError("result.json log/reason must be strings and written_by a known writer")
    return OrderResult(status=status, log=log, reason=reason, written_by=writer)


def read_result(s3: Any, bucket: str, key: str) -> OrderResult | None:
    """The stored result, None when the order has none yet. A malformed one counts as failed:
    the worker did report, and waiting for a better report would only end in a timeout."""
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    try:
        return parse_result(data)
    except MalformedResultError as exc:
        return OrderResult(status=schema.FAILED, reason=f"malformed result.json: {exc}", written_by="orchestrator")


def result_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return False
        raise
    return True


def write_result_once(s3: Any, bucket: str, key: str, result: OrderResult) -> bool:
    """Store ``result`` unless the order already has one; False when another result won (412)."""
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=result.document(), ContentType="application/json", IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise
    return True
