"""Deploy-time handler: apply the product's migrations to the audit database.

A CDK trigger (infra/constructs/export_runner.py) invokes it once the cluster exists, and again on
every deploy that changes the function, which includes every change of the migrations (their
digest is in ``MIGRATIONS_SHA256``). It logs in with the cluster's admin secret (the owner of the
``compliance`` schema; no other function may read that secret) through the usual database
settings (db.py: ``DATABASE_AUTH=secret``, ``DATABASE_SECRET_ARN``, ``DATABASE_HOST``, ...).

Applying is idempotent under the migrator's advisory lock and checksums (migrate.py). Any failure
raises: the trigger reports the function error, so the deployment fails (and rolls back) with the
migration's own message, e.g. ``migration 0005_x failed: ...``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from handlers.common.config import EnvReader
from handlers.common.observability import observability
from handlers.export_runner.db import Database, DatabaseSettings, read_database_settings
from handlers.export_runner.migrate import MIGRATIONS_DIR, apply_migrations
from handlers.export_runner.migration_digest import migrations_digest

logger, metrics, tracer = observability("export-migrator")


def migrator_settings(environ: Mapping[str, str] | None = None) -> DatabaseSettings:
    env = EnvReader(environ)
    settings = read_database_settings(env)
    env.check("export migrator")
    return settings


SETTINGS = migrator_settings()
DATABASE = Database(SETTINGS)


def migrate(
    database: Database, *, logger: Logger, directory: Path = MIGRATIONS_DIR, expected_digest: str | None = None
) -> dict[str, Any]:
    """Apply pending migrations; raise on any failure (the deployment fails with its message)."""
    digest = migrations_digest(directory)
    if expected_digest and expected_digest != digest:
        # The function's code and its configuration come from one synth; a mismatch means the
        # code was replaced by hand, and migrating from an unknown set of files is refused.
        raise RuntimeError(
            f"packaged migrations (sha256 {digest}) are not the ones this deployment was built with "
            f"(MIGRATIONS_SHA256 {expected_digest})"
        )
    try:
        with database.connect(application_name="export-migrator") as conn:
            applied = apply_migrations(conn, directory)
    except Exception as exc:
        logger.error("migrations failed", error=str(exc), error_type=type(exc).__name__)
        raise
    logger.info("migrations applied" if applied else "migrations up to date", applied=applied, digest=digest)
    return {"applied": applied, "migrationsSha256": digest}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return migrate(DATABASE, logger=logger, expected_digest=os.environ.get("MIGRATIONS_SHA256"))
