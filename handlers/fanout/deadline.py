"""The invocation deadline, handed from the handler down to every wait, retry and outside call.

Lambda kills an invocation at its timeout, and a killed invocation fails its whole batch (no
``batchItemFailures``): every record is redelivered, and a record cut off between a side
effect and its guard pays a lease wait. So the handler builds one ``Deadline`` per invocation
from ``context.get_remaining_time_in_millis()`` minus a safety margin (the time needed to
collect the results and return), and passes it explicitly -- router, dispatchers, their
claim waits, retries and HTTP calls. Nothing reads a global clock budget.

The rule everywhere: a step starts only when the time it can take (its timeout, its pause,
its wait) still fits; a wait or a timeout that can be shortened is capped to what is left.
A step that does not fit raises ``DeadlineExceededError`` (a ``RetryableError``): the record
is reported as a batch item failure and redelivered. Each dispatcher raises it only at a
point where its claim protocol lets a redelivery continue correctly (see the "deadline"
notes in slack.py, github.py and email.py); a record that cannot even start
(``RECORD_START_SECONDS``) does nothing at all.

What is not bounded here: a single DynamoDB or Secrets Manager call (botocore's own timeouts
and three attempts, normally milliseconds); the safety margin is there for them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handlers.fanout.model import RetryableError

# What the handler keeps back from Lambda's remaining time: collecting the results, the
# response, the metrics flush, and a DynamoDB write that was already under way.
DEFAULT_SAFETY_MARGIN_SECONDS = 1.0
# A record starts only when at least this much is left (the task-row read and a first step).
RECORD_START_SECONDS = 0.5


class DeadlineExceededError(RetryableError):
    """Too little of the invocation is left to start the next step safely: the record stops here."""


@dataclass(frozen=True)
class Deadline:
    """A point in ``clock`` time (``time.monotonic`` seconds) by which the work must be done."""

    expires_at: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    @classmethod
    def from_context(
        cls,
        context: Any,
        *,
        safety_margin_seconds: float = DEFAULT_SAFETY_MARGIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> Deadline:
        """Lambda's remaining time minus the margin; unbounded for a call without a Lambda context."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return cls.unbounded()
        return cls.after(max(0.0, remaining() / 1000 - safety_margin_seconds), clock=clock)

    @classmethod
    def unbounded(cls) -> Deadline:
        return cls(math.inf)

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self.clock())

    def allows(self, seconds: float) -> bool:
        return self.remaining() >= seconds

    def require(self, seconds: float, step: str) -> None:
        """Raise ``DeadlineExceededError`` unless ``seconds`` are left for ``step``."""
        left = self.remaining()
        if left < seconds:
            raise DeadlineExceededError(
                f"invocation deadline: {step} needs {seconds:.1f} s, {left:.1f} s left",
                retry_after_seconds=0.0,
            )

    def cap(self, seconds: float) -> float:
        """``seconds``, shortened to the time left."""
        return min(seconds, self.remaining())

    def until(self, seconds: float, *, reserve: float = 0.0) -> float:
        """A ``clock`` time ``seconds`` from now, but no later than the deadline minus ``reserve``
        (for waits that take an absolute monotonic limit, e.g. ``ClaimStore.wait_while_held``)."""
        return min(self.clock() + seconds, self.expires_at - reserve)

    def sleep(self, seconds: float, step: str, *, reserve: float = 0.0) -> None:
        """Pause ``seconds`` if that still leaves ``reserve`` for what follows; else raise."""
        self.require(seconds + reserve, step)
        time.sleep(seconds)


NO_DEADLINE = Deadline.unbounded()
