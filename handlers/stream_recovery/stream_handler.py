"""StreamRecovery Lambda on the pending-dispatch markers' stream (INSERT records, NEW_IMAGE).

Per record: parse the marker (``markers.parse_record``: MODIFY/REMOVE are skipped, a malformed
one fails with a log line naming the attribute) -> ``Redispatcher.redispatch`` (eligible
configs under claims, the marker deleted once all are terminal). Markers of one task run in
stream order, tasks concurrently (``OrderedStreamProcessor``); failures are reported by
``dynamodb.SequenceNumber``. A storage error fails the record (Lambda redelivers it); a
webhook that keeps failing does not: its claim is left reclaimable and the sweeper retries it,
so one dead receiver never holds back the stream.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.batch import EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from handlers.common.observability import add_count, observability
from handlers.common.stream_batch import OrderedStreamProcessor
from handlers.stream_recovery.dispatch import Redispatcher
from handlers.stream_recovery.markers import MalformedMarkerError, parse_record, task_key_of
from handlers.stream_recovery.settings import SERVICE, load_settings

settings = load_settings()
logger, metrics, tracer = observability(SERVICE)
redispatcher = Redispatcher(
    tables=settings.tables, policy=settings.policy, claim_expiry_ms=settings.claim_expiry_seconds * 1000
)
processor = OrderedStreamProcessor(
    EventType.DynamoDBStreams,
    key=task_key_of,
    max_concurrency=settings.max_concurrency,
    raise_on_entire_batch_failure=False,
    logger=logger,
)


class _Invocation:
    """The running invocation's end (``time.monotonic()``); one invocation at a time per container."""

    deadline: float | None = None


_invocation = _Invocation()


def handle_record(record: DynamoDBRecord) -> None:
    logger.thread_safe_clear_keys()
    logger.thread_safe_append_keys(sequence_number=record.dynamodb.sequence_number if record.dynamodb else None)
    try:
        marker = parse_record(record.raw_event)
    except MalformedMarkerError as exc:
        logger.error("Malformed pending-dispatch record; reporting it as failed", extra={"reason": str(exc)})
        add_count(metrics, "marker_malformed")
        raise
    if marker is None:
        return  # MODIFY (a refresh) or REMOVE (consumed, TTL): not work
    logger.thread_safe_append_keys(tenant=marker.tenant, task_id=marker.task_id, event_sequence=marker.event_sequence)
    result = redispatcher.redispatch(marker, deadline=_invocation.deadline)
    logger.info(
        "Redispatched",
        extra={
            "outcomes": result.outcomes,
            "marker_deleted": result.marker_deleted,
            "task_missing": result.task_missing,
        },
    )
    add_count(metrics, "marker_completed" if result.marker_deleted else "marker_pending")


@logger.inject_lambda_context(correlation_id_path="Records[0].eventID", clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Every delivery is cut to the time left: a record that cannot finish is left to the sweeper
    # (its marker stays) instead of timing the whole batch out.
    _invocation.deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
    return dict(
        process_partial_response(event=event, record_handler=handle_record, processor=processor, context=context)
    )
