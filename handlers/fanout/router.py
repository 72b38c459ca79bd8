"""One event + its task row -> every subscribed, configured channel; classify the result.

A record fails (is reported as a batch item failure, so Lambda redelivers it) iff some
channel raised: ``RetryableError``, ``MalformedRecordError`` (the record cannot be delivered
on that channel as it is: logged at error as malformed with its reason, counted
``<channel>_malformed_record``; the bounded retries then put it in the on-failure
destination, named in the log) or any unexpected exception. TERMINAL_FAILURE is a
business outcome: logged and counted, never retried. Every dispatch is counted per channel
and outcome (metric ``<channel>_<outcome>``, e.g. ``github_delivered``,
``email_retryable_failure``).

Redelivery re-runs *every* channel of the record, including those that already delivered:
each dispatcher guards its own side effects (edit-in-place comment, email claim markers,
Slack dedup markers), so a sibling's failure never duplicates a notification.

The channels of one record run sequentially, in ``CHANNELS`` order. Parallelism comes from
the batch processor running different tasks at once; running channels in parallel too would
multiply threads (tasks x channels) against the same connection pools for a small gain, and
sequential dispatch keeps each record's log lines in one readable block.

A missing task row is a failure of the record (``TaskNotFoundError``), not a skip. The
producer writes the task row before any of its events and we read it consistently, so a
missing row means a producer bug, an event for a wrong task id, or a row deleted too early:
malformed input in the failure taxonomy. Skipping would silently drop the notification;
failing keeps it (retries cover a producer that wrote in the wrong order, then the DLQ holds
it, named in the log, for an operator to redrive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from handlers.common.observability import add_count
from handlers.fanout.deadline import NO_DEADLINE, Deadline, DeadlineExceededError
from handlers.fanout.model import (
    ChannelDispatcher,
    MalformedRecordError,
    Outcome,
    RetryableError,
    TaskEvent,
)
from handlers.fanout.routing import CHANNELS, TaskEventBudget, channels_for

RETRYABLE_FAILURE = "retryable_failure"


class TaskNotFoundError(MalformedRecordError):
    """The event references a task id that has no row in the task table."""


class ChannelDeliveryError(RetryableError):
    """At least one channel failed retryably: the whole record is redelivered."""

    def __init__(self, event: TaskEvent, failed: Mapping[str, BaseException]) -> None:
        names = ", ".join(sorted(failed))
        delays = [e.retry_after_seconds for e in failed.values() if isinstance(e, RetryableError)]
        known = [d for d in delays if d is not None]
        super().__init__(
            f"event {event.event_id} of task {event.task_id}: channel(s) {names} failed",
            retry_after_seconds=max(known) if known else None,
        )
        self.failed_channels = dict(failed)


class Router:
    def __init__(self, dispatchers: Sequence[ChannelDispatcher], *, logger: Logger, metrics: Metrics) -> None:
        unknown = {dispatcher.channel for dispatcher in dispatchers} - set(CHANNELS)
        if unknown:
            raise ValueError(f"dispatchers for unknown channels: {sorted(unknown)}")
        by_channel = {dispatcher.channel: dispatcher for dispatcher in dispatchers}
        self._dispatchers = {channel: by_channel[channel] for channel in CHANNELS if channel in by_channel}
        self._logger = logger
        self._metrics = metrics

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self._dispatchers)

    def deliver(
        self,
        event: TaskEvent,
        task: Mapping[str, Any] | None,
        budget: TaskEventBudget,
        deadline: Deadline = NO_DEADLINE,
    ) -> dict[str, Outcome]:
        """Dispatch ``event`` to its channels; raises ``ChannelDeliveryError`` if any channel failed.

        Once a channel stopped on the invocation deadline, the later channels are not started
        (they are reported with it: the redelivery runs them)."""
        if task is None:
            self._count("task_not_found")
            raise TaskNotFoundError(f"task {event.task_id} referenced by event {event.event_id} has no task row")

        targets, muted = channels_for(event.event_type, task.get("notifications"), self._dispatchers)
        for channel in muted:
            self._logger.warning(
                "Channel muted for this task by an empty events list in its notification settings",
                extra={"channel": channel, "event_type": event.event_type},
            )
        if not targets:
            self._logger.info("No configured channel subscribes to this event", extra={"event_type": event.event_type})
            self._count("event_unrouted")
            return {}
        if not budget.admit(event.task_id):
            self._logger.warning(
                "Per-task event cap reached for this invocation; event dropped",
                extra={"event_type": event.event_type, "cap": budget.cap, "channels": targets},
            )
            self._count("event_dropped_over_cap")
            return {}

        outcomes: dict[str, Outcome] = {}
        failed: dict[str, BaseException] = {}
        for channel in targets:
            if any(isinstance(exc, DeadlineExceededError) for exc in failed.values()):
                failed[channel] = DeadlineExceededError(
                    f"not started: an earlier channel of event {event.event_id} ran out of time"
                )
                self._count(f"{channel}_deadline_not_started")
                continue
            try:
                outcome = self._dispatchers[channel].dispatch(event, task, deadline)
            except RetryableError as exc:
                failed[channel] = exc
                self._logger.warning(
                    "Channel failed; the record will be redelivered",
                    extra={
                        "channel": channel,
                        "retryable": True,
                        "retry_after_seconds": exc.retry_after_seconds,
                        "error": str(exc),
                    },
                )
                self._count(f"{channel}_{RETRYABLE_FAILURE}")
                continue
            except MalformedRecordError as exc:
                failed[channel] = exc
                self._logger.error(
                    "Channel found the record malformed; reporting it as failed",
                    extra={"channel": channel, "retryable": False, "reason": str(exc)},
                )
                self._count(f"{channel}_malformed_record")
                continue
            except Exception as exc:  # an unexpected error must fail the record, never vanish
                failed[channel] = exc
                self._logger.exception(
                    "Channel raised an unexpected error; the record will be redelivered",
                    extra={"channel": channel, "retryable": True, "error": f"{type(exc).__name__}: {exc}"},
                )
                self._count(f"{channel}_{RETRYABLE_FAILURE}")
                continue
            outcomes[channel] = outcome
            self._count(f"{channel}_{outcome.value}")
            if outcome is Outcome.TERMINAL_FAILURE:
                self._logger.error(
                    "Channel failed terminally; the notification is dropped for this channel",
                    extra={"channel": channel, "event_type": event.event_type, "retryable": False},
                )
        if failed:
            raise ChannelDeliveryError(event, failed)
        return outcomes

    def count(self, name: str) -> None:
        """Add 1 to the metric ``name`` (safe from any worker thread)."""
        self._count(name)

    def _count(self, name: str) -> None:
        # Powertools' metric set is one dict shared by every Metrics instance, added to from
        # worker threads here and in the dispatchers: the one shared lock serializes them.
        add_count(self._metrics, name)
