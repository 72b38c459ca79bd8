"""The one way this product reads a DynamoDB stream (what EventDrivenChecks enforces at synth).

Partial batch failures reported by sequence number, bisect on error, bounded retries, a
maximum record age, one batch per shard at a time (``parallelization_factor=1``: records of a
key stay in order), an on-failure DLQ, and a filter on the event names the handler works on.
TRIM_HORIZON: records written while the mapping is created or replaced are still delivered
(LATEST would silently skip them); every reader's handler is idempotent, so a replay is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs


def stream_event_source(
    table: dynamodb.ITable,
    *,
    dead_letter_queue: sqs.IQueue,
    event_names: Sequence[str],
    batch_size: int,
    max_batching_window: Duration,
    retry_attempts: int,
    max_record_age: Duration,
    starting_position: lambda_.StartingPosition = lambda_.StartingPosition.TRIM_HORIZON,
) -> event_sources.DynamoEventSource:
    return event_sources.DynamoEventSource(
        table,
        starting_position=starting_position,
        batch_size=batch_size,
        max_batching_window=max_batching_window,
        bisect_batch_on_error=True,
        report_batch_item_failures=True,
        retry_attempts=retry_attempts,
        max_record_age=max_record_age,
        parallelization_factor=1,
        on_failure=event_sources.SqsDlq(dead_letter_queue),
        filters=[
            lambda_.FilterCriteria.filter({"eventName": lambda_.FilterRule.is_equal(name)}) for name in event_names
        ],
    )
