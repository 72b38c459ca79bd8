"""init: ``POST /init`` of the HTTP API (IAM authorization, payload format 2.0).

Responses: 200 ``{status: ok, run_id, trace_id, flow_id, done_endpt}``; 400 ``{status: error,
errors: [...]}`` with every validation error, also for a credential reference the deployment may
not read or a code source that cannot be fetched (the caller's to fix); 503 ``{status: error}``
when AWS itself failed (throttling, 5xx: nothing of the caller's is wrong, submitting again is
safe -- a new run id every time, and an incomplete earlier attempt never started).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from handlers.common.aws import client
from handlers.common.claims import system_clock_ms
from handlers.common.observability import add_count, observability
from handlers.execution_engine import schema
from handlers.execution_engine.code_source import CodeSourceError
from handlers.execution_engine.credentials import CredentialError, CredentialResolver
from handlers.execution_engine.init_run import InitSettings, RunInitializer
from handlers.execution_engine.jobs import JobValidationError, parse_job_request
from handlers.execution_engine.run_store import RunStore
from handlers.execution_engine.settings import SERVICE, load, prefixes

settings = load(
    "init",
    schema.ENV_ORDERS_TABLE,
    schema.ENV_ORDER_EVENTS_TABLE,
    schema.ENV_INTERNAL_BUCKET,
    schema.ENV_DONE_BUCKET,
    schema.ENV_SOPS_KEY_PARAMETER_PREFIX,
    schema.ENV_SOPS_KEY_KMS_KEY_ID,
)
logger, metrics, tracer = observability(SERVICE)
# This deployment runs Lambda orders; CodeBuild and SSM come with their targets.
ALLOWED_TARGETS = frozenset({schema.TARGET_LAMBDA})


initializer = RunInitializer(
    settings=InitSettings(
        internal_bucket=settings[schema.ENV_INTERNAL_BUCKET],
        done_bucket=settings[schema.ENV_DONE_BUCKET],
        sops_key_parameter_prefix=settings[schema.ENV_SOPS_KEY_PARAMETER_PREFIX],
        sops_key_kms_key_id=settings[schema.ENV_SOPS_KEY_KMS_KEY_ID],
    ),
    store=RunStore(
        orders_table=settings[schema.ENV_ORDERS_TABLE],
        events_table=settings[schema.ENV_ORDER_EVENTS_TABLE],
        clock_ms=system_clock_ms,
    ),
    credential_source=lambda: CredentialResolver(
        ssm=client("ssm"),
        secretsmanager=client("secretsmanager"),
        parameter_prefixes=prefixes(os.environ.get(schema.ENV_CREDENTIAL_PARAMETER_PREFIXES)),
        secret_prefixes=prefixes(os.environ.get(schema.ENV_CREDENTIAL_SECRET_PREFIXES)),
    ),
    s3=client("s3"),
    ssm=client("ssm"),
    clock_ms=system_clock_ms,
)


def _response(status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status_code, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


def _body(event: dict[str, Any]) -> str | bytes | None:
    """The request body as the client sent it (API Gateway base64-encodes binary bodies)."""
    body = event.get("body")
    if body is not None and event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise JobValidationError(["the request body is marked base64-encoded but is not valid base64"]) from None
    return body


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        job = parse_job_request(_body(event), allowed_targets=ALLOWED_TARGETS)
        result = initializer.initialize(job)
    except JobValidationError as exc:
        logger.info("Job refused", extra={"errors": exc.errors})
        add_count(metrics, "jobs_refused")
        return _response(400, {"status": "error", "errors": exc.errors})
    except (CredentialError, CodeSourceError) as exc:
        logger.info("Job refused", extra={"errors": [str(exc)]})
        add_count(metrics, "jobs_refused")
        return _response(400, {"status": "error", "errors": [str(exc)]})
    except (ClientError, BotoCoreError) as exc:
        logger.exception("AWS failed during init")
        return _response(
            503, {"status": "error", "errors": [f"temporary failure ({type(exc).__name__}); submit again"]}
        )
    logger.info("Run initialized", extra=vars(result))
    add_count(metrics, "jobs_initialized")
    return _response(200, result.response())
