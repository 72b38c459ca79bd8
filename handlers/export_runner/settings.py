"""Settings of the export runner's entry points, read and validated once at cold start.

Runner: COMPLIANCE_EXPORTS_BUCKET; DATABASE_URL or DATABASE_SECRET_ARN (+ DATABASE_HOST,
DATABASE_NAME, DATABASE_SSLMODE, ... see db.py); PRESIGN_TTL_SECONDS (default 900);
RETRY_BACKOFF_SECONDS (default 30) and RETRY_BACKOFF_MAX_SECONDS (default 900): how long a
message that failed before its claim stays invisible (doubling with each receive, bounded). The
endpoint of every AWS client comes from AWS_ENDPOINT_URL, which boto3 reads itself.
Sweeper: the database variables; EXPORT_STUCK_AFTER_SECONDS (default 960: the runner's
900 s timeout plus a minute) and EXPORT_QUEUED_EXPIRY_SECONDS (default 90000: the queue's
one-day retention plus an hour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from handlers.common.config import EnvReader
from handlers.export_runner.db import DatabaseSettings, read_database_settings

DEFAULT_PRESIGN_TTL_SECONDS = 900
MAX_PRESIGN_TTL_SECONDS = 7 * 24 * 3600  # SigV4's limit for a presigned URL
DEFAULT_STUCK_AFTER_SECONDS = 960
DEFAULT_RETRY_BACKOFF_SECONDS = 30
DEFAULT_RETRY_BACKOFF_MAX_SECONDS = 900
MAX_VISIBILITY_SECONDS = 12 * 3600  # SQS's limit for ChangeMessageVisibility
DEFAULT_QUEUED_EXPIRY_SECONDS = 90_000


@dataclass(frozen=True)
class RunnerSettings:
    bucket: str
    database: DatabaseSettings
    presign_ttl_seconds: int
    retry_backoff_seconds: int = DEFAULT_RETRY_BACKOFF_SECONDS
    retry_backoff_max_seconds: int = DEFAULT_RETRY_BACKOFF_MAX_SECONDS

    def retry_delay(self, receive_count: int) -> int:
        """Seconds a message stays invisible after its ``receive_count``-th receive failed: the base,
        doubled per earlier receive, never above the maximum (30, 60, 120, ... 900 by default)."""
        exponent = min(max(receive_count, 1) - 1, 16)
        return min(self.retry_backoff_seconds * 2**exponent, self.retry_backoff_max_seconds)


@dataclass(frozen=True)
class SweeperSettings:
    database: DatabaseSettings
    stuck_after: timedelta
    queued_expiry: timedelta


def read_presign_ttl(env: EnvReader) -> int:
    return env.integer("PRESIGN_TTL_SECONDS", DEFAULT_PRESIGN_TTL_SECONDS, minimum=1, maximum=MAX_PRESIGN_TTL_SECONDS)


def runner_settings(environ: Mapping[str, str] | None = None) -> RunnerSettings:
    env = EnvReader(environ)
    settings = RunnerSettings(
        bucket=env.require("COMPLIANCE_EXPORTS_BUCKET"),
        database=read_database_settings(env),
        presign_ttl_seconds=read_presign_ttl(env),
        retry_backoff_seconds=env.integer(
            "RETRY_BACKOFF_SECONDS", DEFAULT_RETRY_BACKOFF_SECONDS, minimum=0, maximum=MAX_VISIBILITY_SECONDS
        ),
        retry_backoff_max_seconds=env.integer(
            "RETRY_BACKOFF_MAX_SECONDS", DEFAULT_RETRY_BACKOFF_MAX_SECONDS, minimum=0, maximum=MAX_VISIBILITY_SECONDS
        ),
    )
    env.check("export runner")
    return settings


def sweeper_settings(environ: Mapping[str, str] | None = None) -> SweeperSettings:
    env = EnvReader(environ)
    settings = SweeperSettings(
        database=read_database_settings(env),
        stuck_after=timedelta(
            seconds=env.integer("EXPORT_STUCK_AFTER_SECONDS", DEFAULT_STUCK_AFTER_SECONDS, minimum=1)
        ),
        queued_expiry=timedelta(
            seconds=env.integer("EXPORT_QUEUED_EXPIRY_SECONDS", DEFAULT_QUEUED_EXPIRY_SECONDS, minimum=1)
        ),
    )
    env.check("export sweeper")
    return settings
