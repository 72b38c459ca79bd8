"""Scheduled handler: fail export jobs that can no longer finish (see jobs.sweep_jobs)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from handlers.common.observability import observability
from handlers.export_runner import jobs
from handlers.export_runner.db import Database
from handlers.export_runner.settings import SweeperSettings, sweeper_settings

logger, metrics, tracer = observability("export-sweeper")
SETTINGS = sweeper_settings()
DATABASE = Database(SETTINGS.database)


def sweep(database: Database, settings: SweeperSettings, *, logger: Logger) -> list[jobs.SweptJob]:
    with database.connect(application_name="export-sweeper") as conn:
        swept = jobs.sweep_jobs(
            conn, running_longer_than=settings.stuck_after, queued_longer_than=settings.queued_expiry
        )
    for job in swept:
        logger.warning(
            "swept export job", job_id=str(job.job_id), previous_status=job.previous_status, job_error=job.job_error
        )
    return swept


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(raise_on_empty_metrics=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    swept = sweep(DATABASE, SETTINGS, logger=logger)
    metrics.add_metric(name="SweptJobs", unit=MetricUnit.Count, value=len(swept))
    return {"swept": [{"jobId": str(job.job_id), "previousStatus": job.previous_status} for job in swept]}
