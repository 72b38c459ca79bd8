"""Opt-in fixtures that make moto faithful where it runs code or waits (registered in tests/conftest.py).

- ``lambda_runs_handlers``: moto's Lambda runs our handlers in this process (tests/support/moto_lambda.py);
- ``sfn_executes``: moto executes state machines during the test (one race of its interpreter
  fixed, and States.* errors leaving Parallel branches), then the previous config is back;
- ``fast_stepfunctions``: executing state machines whose waits take ``clock.scale`` of their
  seconds (tests/support/fast_stepfunctions.py).

Each one is requested by name; none is autouse, and each undoes its patches after the test.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fast_stepfunctions import (
    StepFunctionsClock,
    answers_before_the_wait_kept,
    scaled_stepfunctions_time,
    states_errors_leave_parallel_branches,
)
from tests.support.moto_lambda import LambdaHarness, lambda_handlers_in_process
from tests.support.moto_server import MotoServer


@pytest.fixture
def lambda_runs_handlers(aws: MotoServer) -> Iterator[LambdaHarness]:
    """moto's Lambda runs our handlers for this test: Invoke (RequestResponse, Event, DryRun),
    S3 and SNS notifications, SQS event source mappings and Step Functions ``lambda:invoke``."""
    if getattr(aws, "pid", None) is not None:
        raise RuntimeError("lambda_runs_handlers patches moto in this process: it needs the in-process moto server")
    with lambda_handlers_in_process() as harness:
        yield harness


def _post_moto_config(server: MotoServer, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{server.endpoint}/moto-api/config", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@pytest.fixture
def sfn_executes(aws: MotoServer) -> Iterator[MotoServer]:
    """moto executes state machines in this test; the previous setting is restored afterwards
    (the config survives ``/moto-api/reset``, so otherwise test order would decide). An answer
    that arrives before a heartbeat-checked task waits is kept (moto lost it)."""
    # GET /moto-api/config leaves the stepfunctions section out; the server runs in-process.
    from moto.core.config import default_user_config

    before = copy.deepcopy(default_user_config.get("stepfunctions", {"execute_state_machine": False}))
    aws.enable_state_machine_execution()
    try:
        with answers_before_the_wait_kept(), states_errors_leave_parallel_branches():
            yield aws
    finally:
        _post_moto_config(aws, {"stepfunctions": before})


@pytest.fixture
def fast_stepfunctions(sfn_executes: MotoServer) -> Iterator[StepFunctionsClock]:
    """Executing state machines whose Wait states, retry intervals, heartbeats and timeouts take
    ``clock.scale`` (default 0.01) of their seconds; set ``clock.scale`` to change it mid-test."""
    if getattr(sfn_executes, "pid", None) is not None:
        raise RuntimeError("fast_stepfunctions patches moto in this process: it needs the in-process moto server")
    with scaled_stepfunctions_time(StepFunctionsClock()) as clock:
        yield clock
