"""The contract between the fan-out router and the channel dispatchers.

A dispatcher receives one parsed task event and the task row as read at the start of the
record, and answers with an Outcome, or raises:
- ``RetryableError`` (or any unexpected exception) -> the router reports the record as a
  batch item failure and Lambda redelivers it;
- a terminal problem (input valid, work impossible: channel archived, recipient rejected)
  is NOT raised: the dispatcher logs it with a metric and returns ``TERMINAL_FAILURE``.
Dispatchers are re-run on redelivery, so each one guards its own side effects (see the
dedup notes in each dispatcher module).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from handlers.fanout.deadline import Deadline

Scalar = str | int | float | bool | None


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # not for this channel, gated, or already delivered (dedup)
    TERMINAL_FAILURE = "terminal_failure"


class RetryableError(Exception):
    """A transient failure (throttle, 5xx, timeout): the record must be redelivered."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class MalformedRecordError(ValueError):
    """A stream record that cannot be parsed: a failure of that record, bound for the DLQ."""


@dataclass(frozen=True)
class TaskEvent:
    task_id: str
    event_id: str
    event_type: str  # the effective type: agent_milestone(pr_created) arrives here as pr_created
    timestamp: str  # ISO 8601, as written by the producer
    metadata: Mapping[str, Scalar] = field(default_factory=dict)
    sequence_number: str = ""


class ChannelDispatcher(Protocol):
    channel: str

    def dispatch(self, event: TaskEvent, task: Mapping[str, Any], deadline: Deadline = ...) -> Outcome:
        """``deadline`` bounds every wait, retry and outside call (``handlers.fanout.deadline``)."""
        ...
