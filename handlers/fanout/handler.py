"""FanOutConsumer Lambda: the one reader of the task-events stream.

Per record: parse -> read the task row (consistent GetItem) -> route to the channels -> report.
The invocation deadline (``deadline.Deadline``, from the Lambda context) goes down to every
channel: a record that cannot start in time is reported without running, and a record whose
next step would not fit stops where its channel's claims let a redelivery continue.
Records of one task run in stream order, tasks run concurrently (``OrderedStreamProcessor``);
failures are reported by SequenceNumber. See router.py for the failure classes.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.utilities.batch import EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
)

from handlers.common.observability import observability
from handlers.common.stream_batch import OrderedStreamProcessor
from handlers.fanout.deadline import NO_DEADLINE, RECORD_START_SECONDS, Deadline, DeadlineExceededError
from handlers.fanout.email import EmailDispatcher
from handlers.fanout.github import GitHubDispatcher
from handlers.fanout.model import ChannelDispatcher, MalformedRecordError
from handlers.fanout.parsing import parse_record, task_id_of
from handlers.fanout.router import Router
from handlers.fanout.routing import TaskEventBudget
from handlers.fanout.settings import SERVICE, FanOutSettings, load_settings
from handlers.fanout.task_row import load_task


def build_dispatchers(settings: FanOutSettings) -> list[ChannelDispatcher]:
    dispatchers: list[ChannelDispatcher] = []
    if settings.slack:
        from handlers.fanout.slack import (
            SlackDispatcher,  # slack-sdk is only imported when Slack is on
        )

        dispatchers.append(
            SlackDispatcher(
                task_table_name=settings.task_table_name,
                slack_secret_prefix=settings.slack.secret_prefix,
                slack_api_url=settings.slack.api_url,
            )
        )
    if settings.github:
        dispatchers.append(
            GitHubDispatcher(
                task_table_name=settings.task_table_name,
                default_token_secret_arn=settings.github.token_secret_arn,
                repo_table_name=settings.github.repo_table_name,
                repo_secret_arn_prefix=settings.github.repo_secret_arn_prefix,
                api_url=settings.github.api_url,
            )
        )
    if settings.email:
        dispatchers.append(EmailDispatcher(task_table_name=settings.task_table_name, sender=settings.email.sender))
    return dispatchers


settings = load_settings()
logger, metrics, tracer = observability(SERVICE)
router = Router(build_dispatchers(settings), logger=logger, metrics=metrics)
# Every failure is reported by SequenceNumber, even when the whole batch failed, so the
# redelivery always starts from the first failed record (never an opaque function error).
processor = OrderedStreamProcessor(
    EventType.DynamoDBStreams,
    key=task_id_of,
    max_concurrency=settings.max_concurrency,
    raise_on_entire_batch_failure=False,
    logger=logger,
)


def handle_record(record: DynamoDBRecord, budget: TaskEventBudget, deadline: Deadline = NO_DEADLINE) -> None:
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(sequence_number=record.dynamodb.sequence_number if record.dynamodb else None)
    try:
        deadline.require(RECORD_START_SECONDS, "starting the record")
    except DeadlineExceededError:
        logger.warning("Too little of the invocation is left to start this record; reported for redelivery")
        router.count("record_deadline_not_started")
        raise
    try:
        event = parse_record(record)
        if event is None:
            router.count("record_ignored_remove")  # deleting an event is not a notification
            return
        logger.thread_safe_append_keys(task_id=event.task_id, event_id=event.event_id, event_type=event.event_type)
        router.deliver(event, load_task(settings.task_table_name, event.task_id), budget, deadline)
    except MalformedRecordError as exc:  # bad record, unknown task, malformed notification settings
        logger.error("Malformed input; reporting the record as failed", extra={"reason": str(exc)})
        router.count("record_malformed")
        raise


def process(event: dict[str, Any], deadline: Deadline = NO_DEADLINE) -> dict[str, Any]:
    """One batch through the ordered processor: the handler's logic, also used by the redrive command."""
    record_handler = functools.partial(handle_record, budget=TaskEventBudget(), deadline=deadline)
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))


# The correlation id is the first record's eventID: a redelivery of the same batch logs the same id.
@logger.inject_lambda_context(correlation_id_path="Records[0].eventID", clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process(event, Deadline.from_context(context))
