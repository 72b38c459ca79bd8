"""Deadline: the invocation's time budget, from the Lambda context, as every wait and call uses it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pytest

from handlers.fanout.deadline import Deadline, DeadlineExceededError
from handlers.fanout.model import RetryableError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Context:
    remaining_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_the_deadline_is_the_remaining_time_minus_the_safety_margin() -> None:
    clock = FakeClock()
    deadline = Deadline.from_context(Context(5_000), safety_margin_seconds=1.0, clock=clock)

    assert deadline.remaining() == pytest.approx(4.0)
    clock.now += 3.5
    assert deadline.remaining() == pytest.approx(0.5)
    clock.now += 10
    assert deadline.remaining() == 0.0


def test_a_context_with_less_time_than_the_margin_leaves_nothing() -> None:
    assert Deadline.from_context(Context(300), safety_margin_seconds=1.0).remaining() == 0.0


def test_a_call_without_a_lambda_context_is_unbounded() -> None:
    deadline = Deadline.from_context(None)

    assert deadline.remaining() == math.inf and deadline.allows(1e9)


def test_require_raises_a_retryable_error_naming_the_step_and_the_time_left() -> None:
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock=clock)

    deadline.require(2.0, "fits exactly")
    with pytest.raises(DeadlineExceededError, match=r"posting needs 3\.0 s, 2\.0 s left") as raised:
        deadline.require(3.0, "posting")
    assert isinstance(raised.value, RetryableError)


def test_cap_and_until_never_reach_past_the_deadline() -> None:
    clock = FakeClock()
    deadline = Deadline.after(2.0, clock=clock)

    assert deadline.cap(8.0) == pytest.approx(2.0) and deadline.cap(0.5) == 0.5
    assert deadline.until(10.0) == pytest.approx(102.0)
    assert deadline.until(10.0, reserve=1.5) == pytest.approx(100.5)
    assert deadline.until(0.2, reserve=1.5) == pytest.approx(100.2)


def test_sleep_refuses_a_pause_that_would_not_leave_the_reserve_without_sleeping() -> None:
    deadline = Deadline.after(0.5)

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        deadline.sleep(0.3, "backoff", reserve=0.3)
    assert time.monotonic() - started < 0.1
    deadline.sleep(0.05, "backoff", reserve=0.1)
