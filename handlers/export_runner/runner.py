"""SQS handler of the export runner (batch size 1, ReportBatchItemFailures).

Each record: parse ``{"jobId": "<uuid>"}`` (anything else fails that record, which reaches
the DLQ after maxReceiveCount), then run the job (export_job.py documents the claim and the
retry windows). Business failures are recorded on the job and acknowledged; only failures
before the claim (the database unreachable) are reported for redelivery.

Retry timing: the queue's visibility timeout is 6 x the function timeout (90 minutes), so a
reported message would come back only after that. Before reporting it, the runner shortens its
visibility to a backoff that grows with the receive count (RunnerSettings.retry_delay: 30 s,
then 60 s, ... bounded by 900 s). If that call fails, the message is still reported and comes
back after the queue's visibility timeout, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from handlers.common.aws import client
from handlers.common.observability import observability
from handlers.export_runner.db import Database
from handlers.export_runner.export_job import (
    MalformedMessageError,
    Outcome,
    RunnerDependencies,
    parse_job_message,
    run_export_job,
)
from handlers.export_runner.settings import runner_settings
from handlers.export_runner.storage import s3_client

logger, metrics, tracer = observability("export-runner")
SETTINGS = runner_settings()
DATABASE = Database(SETTINGS.database)
# A whole-batch failure is reported like a partial one (the batch is one message), instead of
# raising: the record is redelivered either way, without counting as a function error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

# Stop this long before the function timeout, leaving time to abort the upload and record the
# failure; otherwise the job would wait for the sweeper.
DEADLINE_MARGIN_MS = 30_000
OUTCOME_METRICS = {
    Outcome.COMPLETED: "ExportsCompleted",
    Outcome.FAILED: "ExportsFailed",
    Outcome.SKIPPED_NOT_QUEUED: "ExportsSkippedNotQueued",
    Outcome.JOB_VANISHED: "ExportsJobVanished",
}


def _time_left(context: LambdaContext | None) -> Callable[[], int] | None:
    """Milliseconds before the runner must stop: the invocation's remaining time less the margin."""
    if context is None:
        return None
    return lambda: context.get_remaining_time_in_millis() - DEADLINE_MARGIN_MS


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> str:
    try:
        job_id = parse_job_message(record.body)
    except MalformedMessageError as exc:
        logger.error("malformed export message", message_id=record.message_id, reason=str(exc))
        metrics.add_metric(name="MalformedMessages", unit=MetricUnit.Count, value=1)
        raise
    started = time.monotonic()
    deps = RunnerDependencies(
        database=DATABASE, s3=s3_client(), bucket=SETTINGS.bucket, presign_ttl_seconds=SETTINGS.presign_ttl_seconds
    )
    try:
        report = run_export_job(job_id, deps, logger=logger, time_left_ms=_time_left(lambda_context))
    except Exception:
        # Only failures before the claim get here (the database unreachable): redelivered, soon.
        delay = SETTINGS.retry_delay(_receive_count(record))
        logger.exception(
            "export not started; the message will be redelivered", job_id=str(job_id), retry_in_seconds=delay
        )
        metrics.add_metric(name="ExportsRetried", unit=MetricUnit.Count, value=1)
        _set_visibility(record, delay)
        raise
    metrics.add_metric(name=OUTCOME_METRICS[report.outcome], unit=MetricUnit.Count, value=1)
    if report.outcome is Outcome.COMPLETED and report.result is not None:
        metrics.add_metric(name="ExportedRows", unit=MetricUnit.Count, value=report.result.rows)
        metrics.add_metric(name="ExportedBytes", unit=MetricUnit.Bytes, value=report.result.bytes)
        metrics.add_metric(name="ExportSeconds", unit=MetricUnit.Seconds, value=time.monotonic() - started)
    return report.outcome.value


def _receive_count(record: SQSRecord) -> int:
    try:
        return int(record.attributes.approximate_receive_count)
    except (TypeError, ValueError):
        return 1


def _set_visibility(record: SQSRecord, seconds: int) -> None:
    """Make the failed message visible again after ``seconds`` (instead of the queue's timeout)."""
    try:
        # arn:aws:sqs:<region>:<account>:<name>; the URL comes from SQS (the endpoint may be local).
        _, _, _, _, account, name = record.event_source_arn.split(":", 5)
        sqs = client("sqs")
        queue_url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=record.receipt_handle, VisibilityTimeout=seconds
        )
    except Exception:
        logger.warning(
            "could not shorten the failed message's visibility; it returns after the queue's visibility timeout",
            message_id=record.message_id,
            exc_info=True,
        )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(
        process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
    )
