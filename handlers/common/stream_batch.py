"""Ordered, concurrent partial-batch processing for DynamoDB Streams and Kinesis.

Powertools' ``BatchProcessor`` runs every record of a batch one after the other and keeps
going past failures. That is wrong for a stream consumer that must keep per-key order: if
record 3 of task T fails and record 5 of task T succeeds, Lambda redelivers from record 3 and
record 5 runs again *after* 3 -- or, worse, 5's side effect happened before 3's. It is also
slow: records of unrelated keys wait for each other.

``OrderedStreamProcessor`` keeps Powertools' contract (``process_partial_response``, the
``batchItemFailures`` response, ``success_messages``/``fail_messages``) and changes the
scheduling:

- records are grouped by a caller-given key function (e.g. the task id in the stream keys);
- the records of one key run in stream order, on one worker at a time;
- different keys run concurrently on a bounded thread pool (``max_concurrency``);
- after a key's first failure, its later records are not run: they are reported as failures
  too (``KeyCircuitOpenError``), so Lambda redelivers them after the failed one, in order;
- a record whose key cannot be extracted is a failure of that record alone (logged with the
  reason); it never stops other keys;
- failures are reported by ``dynamodb.SequenceNumber`` (Kinesis: ``kinesis.sequenceNumber``),
  in stream order.

Lambda's checkpoint for a stream with ReportBatchItemFailures is the lowest reported sequence
number: everything from it onward is redelivered, including records of other keys that had
already succeeded. Their handlers must therefore be idempotent -- which every side effect in
this code base is required to be anyway.

Usage::

    processor = OrderedStreamProcessor(EventType.DynamoDBStreams, key=task_id_of, max_concurrency=16)
    return process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch.base import (
    BatchEventTypes,
    FailureResponse,
    SuccessResponse,
)
from aws_lambda_powertools.utilities.batch.exceptions import ExceptionInfo

_module_logger = logging.getLogger(__name__)

KeyFunction = Callable[[Any], str]
RecordResult = SuccessResponse | FailureResponse


class KeyCircuitOpenError(Exception):
    """An earlier record of the same key failed in this batch: this record was not run."""


class RecordKeyError(Exception):
    """The key of a record could not be extracted: the record cannot be ordered, it fails."""


class OrderedStreamProcessor(BatchProcessor):
    """Per-key ordered, cross-key concurrent partial batch processor for streams.

    ``key`` receives the record as the Powertools event source data class (``DynamoDBRecord``
    or ``KinesisStreamRecord``, even when a parser ``model`` is given, so a record the model
    rejects can still be ordered and reported) and returns its ordering key. It may raise any
    exception to say the record has no usable key.
    """

    def __init__(
        self,
        event_type: EventType,
        *,
        key: KeyFunction,
        max_concurrency: int = 8,
        model: Any = None,
        raise_on_entire_batch_failure: bool = True,
        logger: Any = None,
    ) -> None:
        if event_type not in (EventType.DynamoDBStreams, EventType.KinesisDataStreams):
            raise ValueError(f"OrderedStreamProcessor handles stream events only, not {event_type.value}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        super().__init__(
            event_type=event_type,
            model=model,
            raise_on_entire_batch_failure=raise_on_entire_batch_failure,
            logger=logger,
        )
        self._key = key
        self.max_concurrency = max_concurrency
        # success_handler/failure_handler run on worker threads; the base class appends to
        # shared lists, so they are serialized here.
        self._results_lock = threading.Lock()

    def process(self) -> list[tuple]:
        """Run the batch; return one result tuple per record, in the order of ``self.records``."""
        results: list[RecordResult | None] = [None] * len(self.records)
        groups: dict[str, list[int]] = {}
        for index, raw in enumerate(self.records):
            try:
                record_key = self._extract_key(raw)
            except RecordKeyError:
                results[index] = self.failure_handler(record=self._to_data(raw), exception=sys.exc_info())
                continue
            groups.setdefault(record_key, []).append(index)

        if groups:
            workers = min(self.max_concurrency, len(groups))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stream-key") as pool:
                futures = [pool.submit(self._process_key, indexes, results) for indexes in groups.values()]
                for future in futures:
                    future.result()  # _process_key never raises; this only joins

        # Report in stream order: the lowest failed sequence number is Lambda's checkpoint.
        ordered = [result for result in results if result is not None]
        self.success_messages = [entry[2] for entry in ordered if entry[0] == "success"]
        self.fail_messages = [entry[2] for entry in ordered if entry[0] == "fail"]
        return ordered

    def _process_key(self, indexes: Iterable[int], results: list[RecordResult | None]) -> None:
        failed_at: str | None = None
        held_back = 0
        for index in indexes:
            raw = self.records[index]
            if failed_at is not None:
                circuit_open = KeyCircuitOpenError(f"record {failed_at} of the same key failed earlier in this batch")
                results[index] = self.failure_handler(
                    record=self._to_data(raw),
                    exception=(KeyCircuitOpenError, circuit_open, None),
                )
                held_back += 1
                continue
            result = self._process_record(raw)
            results[index] = result
            if result[0] == "fail":
                failed_at = _sequence_number(raw)
        if held_back:
            (self.logger or _module_logger).info(
                "Later records of a failed key were not processed; reported for redelivery in order",
                extra={"failed_sequence_number": failed_at, "held_back": held_back},
            )

    def _extract_key(self, raw: dict) -> str:
        try:
            value = self._key(self._to_data(raw))
        except Exception as exc:
            reason = f"cannot extract the ordering key: {type(exc).__name__}: {exc}"
            self._log_bad_key(raw, reason)
            raise RecordKeyError(reason) from exc
        if not isinstance(value, str) or not value:
            reason = f"the ordering key must be a non-empty string, got {value!r}"
            self._log_bad_key(raw, reason)
            raise RecordKeyError(reason)
        return value

    def _log_bad_key(self, raw: dict, reason: str) -> None:
        log = self.logger or _module_logger
        log.error(
            "Stream record has no usable key; reporting it as failed",
            extra={
                "sequence_number": _sequence_number(raw),
                "reason": reason,
            },
        )

    def _to_data(self, raw: dict) -> BatchEventTypes:
        # The plain data class (not the model) so failure identifiers can always be collected,
        # even for a record the model would reject.
        return self._to_batch_type(record=raw, event_type=self.event_type)

    def success_handler(self, record: Any, result: Any) -> SuccessResponse:
        with self._results_lock:
            return super().success_handler(record, result)

    def failure_handler(self, record: Any, exception: ExceptionInfo) -> FailureResponse:
        with self._results_lock:
            return super().failure_handler(record, exception)


def _sequence_number(raw: dict) -> str | None:
    if not isinstance(raw, dict):
        return None
    dynamodb = raw.get("dynamodb")
    if isinstance(dynamodb, dict):
        return dynamodb.get("SequenceNumber")
    kinesis = raw.get("kinesis")
    if isinstance(kinesis, dict):
        return kinesis.get("sequenceNumber")
    return None
