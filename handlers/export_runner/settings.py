"""Settings of the export runner's entry points, read and validated once at cold start.

Runner: COMPLIANCE_EXPORTS_BUCKET; DATABASE_URL or DATABASE_SECRET_ARN (+ DATABASE_HOST,
DATABASE_NAME, DATABASE_SSLMODE); PRESIGN_TTL_SECONDS (default 900). The endpoint of every AWS
client comes from AWS_ENDPOINT_URL, which boto3 reads itself.
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
DEFAULT_QUEUED_EXPIRY_SECONDS = 90_000


@dataclass(frozen=True)
class RunnerSettings:
    bucket: str
    database: DatabaseSettings
    presign_ttl_seconds: int


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
