"""StreamRecovery worker settings, read once at cold start (a broken deployment fails loudly).

The table variables are the writer library's (``writer.ENV_*``), so the application, the stream
handler and the sweeper are configured with the same names. Timing rules of the spec are
checked here too: claim expiry > retry horizon, function timeout > one attempt (connect + read
timeout), claim expiry > function timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from handlers.common.config import ConfigurationError, EnvReader
from handlers.stream_recovery import writer
from handlers.stream_recovery.delivery import DeliveryPolicy
from handlers.stream_recovery.dispatch import DispatchTables

SERVICE = "stream-recovery"


@dataclass(frozen=True)
class WorkerSettings:
    tables: DispatchTables
    policy: DeliveryPolicy
    claim_expiry_seconds: int
    function_timeout_seconds: int
    max_concurrency: int


def load_settings(environ: Mapping[str, str] | None = None) -> WorkerSettings:
    env = EnvReader(environ)
    tables = DispatchTables(
        tasks=env.require(writer.ENV_TASKS_TABLE),
        task_events=env.require(writer.ENV_TASK_EVENTS_TABLE),
        push_configs=env.require(writer.ENV_PUSH_CONFIGS_TABLE),
        pending_dispatches=env.require(writer.ENV_PENDING_DISPATCHES_TABLE),
        deliveries=env.require(writer.ENV_DELIVERIES_TABLE),
    )
    # Defaults: a 60 s horizon inside a 90 s function inside a 5 min claim.
    horizon = env.integer("DELIVERY_RETRY_HORIZON_SECONDS", 60, minimum=1, maximum=600)
    max_attempts = env.integer("DELIVERY_MAX_ATTEMPTS", 8, minimum=1, maximum=100)
    claim_expiry = env.integer("DELIVERY_CLAIM_EXPIRY_SECONDS", 300, minimum=1, maximum=3600)
    function_timeout = env.integer("FUNCTION_TIMEOUT_SECONDS", 90, minimum=1, maximum=900)
    max_concurrency = env.integer("STREAM_MAX_CONCURRENCY", 8, minimum=1, maximum=64)
    # Development only (the construct never sets them): plain http:// and private targets.
    allow_http = env.optional("DELIVERY_ALLOW_HTTP", "false") == "true"
    allow_private = env.optional("DELIVERY_ALLOW_PRIVATE_TARGETS", "false") == "true"
    env.check("StreamRecovery worker")
    try:
        policy = DeliveryPolicy(
            retry_horizon_seconds=float(horizon),
            max_attempts=max_attempts,
            allow_http=allow_http,
            allow_private_targets=allow_private,
        )
        policy.check_fits(claim_expiry_seconds=claim_expiry, function_timeout_seconds=function_timeout)
    except ValueError as exc:
        raise ConfigurationError(f"StreamRecovery worker: invalid configuration: {exc}") from exc
    return WorkerSettings(tables, policy, claim_expiry, function_timeout, max_concurrency)
