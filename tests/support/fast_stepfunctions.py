"""Step Functions in moto, executing faithfully and fast (fixtures in tests/support/moto_harness.py).

moto 5.2.5 runs state machines (LocalStack's ASL interpreter, moto/stepfunctions/parser) only
after ``POST /moto-api/config {"stepfunctions": {"execute_state_machine": true}}``, and that
config survives ``/moto-api/reset``: the ``sfn_executes`` fixture switches it on for one test and
puts the previous value back afterwards, so test order never decides whether executions run.

``sfn_executes`` also fixes one race of the interpreter (``answers_before_the_wait_kept``): with
HeartbeatSeconds, a SendTaskSuccess that arrived before the task started waiting was lost and the
task timed out, which an SQS-mapped Lambda (it answers inside SendMessage) always hit.

The interpreter waits in real seconds. ``fast_stepfunctions`` multiplies every wall-clock wait
of the interpreter by ``clock.scale`` (default 0.01: a 30 s Wait takes 0.3 s) rather than
skipping it, so the order of events keeps its meaning: a task answered before its heartbeat
expires succeeds, one left unanswered times out. The waits it covers (every ``time.sleep`` and
``Event.wait(timeout)``/``join(timeout)`` in moto/stepfunctions/parser, found by grep):

- Wait states (Seconds, SecondsPath, Timestamp, TimestampPath):
  ``WaitFunction._wait_interval`` waits on ``env.program_state_event`` (replaced: a scaled
  deadline, still interrupted by a stopped or failed execution);
- Retry intervals (IntervalSeconds x BackoffRate^n, capped by MaxDelaySeconds, with jitter):
  the ``time.sleep`` in ``retrier_decl``;
- a state's TimeoutSeconds/TimeoutSecondsPath: ``terminated_event.wait`` in
  ``execute_state._evaluate_with_timeout`` (its ``threading.Event``);
- HeartbeatSeconds, the waitForTaskToken timeout and the activity start timeout: the Events of
  ``asl/eval/callback/callback.py`` (HeartbeatEndpoint, CallbackEndpoint, ActivityTaskStartEndpoint);
- the state machine's own TimeoutSeconds: ``worker_thread.join`` in ``program.py``;
- the 0.5 s poll of ``.sync`` integrations (``state_task_service_callback``), scaled but never
  below ``clock.poll_floor`` (20 ms) so it does not spin.

(``parser/provider.py`` also sleeps, in GetActivityTask, but moto never loads it: it imports
``localstack``; moto's parser backend has no activity worker API, so activity tasks cannot be
answered anyway.)

Not scaled: timestamps in the history and ``$$.State.EnteredTime`` stay wall-clock, and a
Timestamp Wait scales the remaining delta (it ends early in wall-clock terms).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest


@dataclass
class StepFunctionsClock:
    """How ASL seconds map to wall-clock seconds while ``fast_stepfunctions`` is on (mutable)."""

    scale: float = 0.01
    poll_floor: float = 0.02

    def wall(self, seconds: float) -> float:
        return max(0.0, float(seconds)) * self.scale

    def poll(self, seconds: float) -> float:
        return max(self.poll_floor, self.wall(seconds)) if seconds > 0 else 0.0


class _Delegate:
    """A stand-in for a module (``time``, ``threading``) with some attributes replaced."""

    def __init__(self, module: ModuleType, **replacements: Any) -> None:
        self._module = module
        self.__dict__.update(replacements)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def scaled_stepfunctions_time(clock: StepFunctionsClock) -> Iterator[StepFunctionsClock]:
    """Scale the interpreter's waits by ``clock.scale`` (read at each wait); undone on exit."""
    # Imported here: the ASL interpreter takes ~2 s to import, which pytest startup should not pay.
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from moto.stepfunctions.parser.asl.component.program import program
    from moto.stepfunctions.parser.asl.component.state.exec import execute_state
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_callback,
    )
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction
    from moto.stepfunctions.parser.asl.eval.callback import callback

    class ScaledEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            return super().wait(None if timeout is None else clock.wall(timeout))

    class ScaledJoinThread(threading.Thread):
        def join(self, timeout: float | None = None) -> None:
            super().join(None if timeout is None else clock.wall(timeout))

    def wait_interval(self: Any, env: Any, wait_seconds: float) -> None:
        deadline = time.monotonic() + clock.wall(wait_seconds)
        while env.is_running():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            env.program_state_event.wait(remaining)  # set when the execution stops or fails

    def scaled_sleep(seconds: float) -> None:
        time.sleep(clock.wall(seconds))

    def polling_sleep(seconds: float) -> None:
        time.sleep(clock.poll(seconds))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WaitFunction, "_wait_interval", wait_interval)
        patch.setattr(retrier_decl, "time", _Delegate(time, sleep=scaled_sleep))
        patch.setattr(execute_state, "threading", _Delegate(threading, Event=ScaledEvent))
        patch.setattr(callback, "Event", ScaledEvent)
        patch.setattr(program, "threading", _Delegate(threading, Thread=ScaledJoinThread))
        patch.setattr(state_task_service_callback, "time", _Delegate(time, sleep=polling_sleep))
        yield clock


@contextlib.contextmanager
def answers_before_the_wait_kept() -> Iterator[None]:
    """Fix a race in moto's interpreter: with HeartbeatSeconds, an answer that arrives before the
    task starts waiting is lost and the task ends in States.Timeout.

    The interpreter sends the message (``sqs:sendMessage.waitForTaskToken``), only then creates the
    heartbeat endpoint and waits on it; SendTaskSuccess/Failure sets the outcome and notifies the
    heartbeat endpoint only if it exists already. An SQS-mapped Lambda answers inside SendMessage,
    so with HeartbeatSeconds it always lost the answer. The fix: a heartbeat endpoint created
    after the outcome starts notified, so the waiter reads the outcome at once.
    """
    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint

    original = CallbackEndpoint.setup_heartbeat_endpoint

    def setup_heartbeat_endpoint(self: Any, heartbeat_seconds: int) -> Any:
        endpoint = original(self, heartbeat_seconds)
        if self.get_outcome() is not None:  # notify() ran before the endpoint existed
            endpoint.notify()
        return endpoint

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CallbackEndpoint, "setup_heartbeat_endpoint", setup_heartbeat_endpoint)
        yield


@contextlib.contextmanager
def states_errors_leave_parallel_branches() -> Iterator[None]:
    """Fix moto's interpreter: a ``States.*`` error leaving a Parallel branch (a heartbeat
    timeout of a task token inside the branch: ``States.Timeout``) crashed the execution, because
    the Parallel state re-raised it as a custom error name, which refuses the ``States.`` prefix.
    AWS hands it to the Parallel's Catch like any other error; so does this.
    """
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (
        ILLEGAL_CUSTOM_ERROR_PREFIX,
        CustomErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.state.exec.state_parallel import branches_decl

    def error_name(error_name: str | None) -> Any:
        if error_name is not None and error_name.startswith(ILLEGAL_CUSTOM_ERROR_PREFIX):
            return StatesErrorName.from_name(error_name)
        return CustomErrorName(error_name=error_name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(branches_decl, "CustomErrorName", error_name)
        yield


def wait_for_execution(sfn: Any, execution_arn: str, *, within: float = 10.0) -> dict[str, Any]:
    """DescribeExecution until it is no longer RUNNING; fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        described = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return dict(described)
        if time.monotonic() > deadline:
            raise AssertionError(f"execution still RUNNING after {within} s: {execution_arn}")
        time.sleep(0.02)


def entered_states(sfn: Any, execution_arn: str) -> list[str]:
    """The names of the states the execution entered, in order (from its history)."""
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
