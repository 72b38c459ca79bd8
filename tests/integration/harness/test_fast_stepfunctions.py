"""``fast_stepfunctions`` (tests/support/fast_stepfunctions.py): the same executions, a hundred times faster.

Assertions are on behaviour (status, states entered, errors caught); the only time bound is the
functional guard of ``wait_for_execution`` (10 s, where the unscaled runs would take 35 s or more).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest

from tests.support.fast_stepfunctions import (
    StepFunctionsClock,
    entered_states,
    scaled_stepfunctions_time,
    wait_for_execution,
)
from tests.support.moto_lambda import LambdaHarness

ROLE = "arn:aws:iam::123456789012:role/sfn-harness"


def run(definition: dict[str, Any], execution_input: Any = None, *, within: float = 10.0) -> tuple[str, dict[str, Any]]:
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(name="fast", definition=json.dumps(definition), roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps(execution_input or {}))["executionArn"]
    return execution, wait_for_execution(sfn, execution, within=within)


def history_types(execution: str) -> list[str]:
    events = boto3.client("stepfunctions").get_execution_history(executionArn=execution, maxResults=1000)["events"]
    return [e["type"] for e in events]


def test_a_30_second_wait_and_retry_intervals_take_a_fraction_of_their_time(
    fast_stepfunctions: StepFunctionsClock,
) -> None:
    # Wait 30 s, then a read of a missing table retried after 5 s and 10 s, then caught: 45 s unscaled.
    definition = {
        "StartAt": "Wait30",
        "States": {
            "Wait30": {"Type": "Wait", "Seconds": 30, "Next": "Read"},
            "Read": {
                "Type": "Task",
                "Resource": "arn:aws:states:::dynamodb:getItem",
                "Parameters": {"TableName": "missing", "Key": {"pk": {"S": "1"}}},
                "Retry": [
                    {
                        "ErrorEquals": ["DynamoDB.ResourceNotFoundException"],
                        "IntervalSeconds": 5,
                        "BackoffRate": 2,
                        "MaxAttempts": 2,
                    }
                ],
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "GaveUp"}],
                "End": True,
            },
            "GaveUp": {"Type": "Pass", "End": True},
        },
    }

    execution, described = run(definition)

    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"])["error"]["Error"] == "DynamoDB.ResourceNotFoundException"
    assert entered_states(boto3.client("stepfunctions"), execution) == ["Wait30", "Read", "GaveUp"]
    assert history_types(execution).count("TaskFailed") == 3  # the first try and both retries


def test_a_retried_lambda_task_succeeds_after_its_intervals(
    fast_stepfunctions: StepFunctionsClock, lambda_runs_handlers: LambdaHarness
) -> None:
    flaky = lambda_runs_handlers.create_function("flaky", "tests.support.sample_handlers.flaky")
    definition = {
        "StartAt": "Wait30",
        "States": {
            "Wait30": {"Type": "Wait", "Seconds": 30, "Next": "Call"},
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": flaky, "Payload": {"key": "job-1", "failures": 2}},
                "OutputPath": "$.Payload",
                "Retry": [
                    {"ErrorEquals": ["TransientError"], "IntervalSeconds": 5, "BackoffRate": 1, "MaxAttempts": 3}
                ],
                "End": True,
            },
        },
    }

    execution, described = run(definition)

    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"key": "job-1", "attempts": 3}  # one warm container counted them
    assert entered_states(boto3.client("stepfunctions"), execution) == ["Wait30", "Call"]
    assert [i.error["errorType"] if i.error else "ok" for i in lambda_runs_handlers.invocations_of("flaky")] == [
        "TransientError",
        "TransientError",
        "ok",
    ]


def _callback_machine(queue_url: str, timing: dict[str, int]) -> dict[str, Any]:
    return {
        "StartAt": "Ask",
        "States": {
            "Ask": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                "Parameters": {"QueueUrl": queue_url, "MessageBody": {"token.$": "$$.Task.Token"}},
                **timing,
                "Catch": [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error", "Next": "TimedOut"}],
                "Next": "Answered",
            },
            "Answered": {"Type": "Pass", "End": True},
            "TimedOut": {"Type": "Pass", "End": True},
        },
    }


@pytest.mark.parametrize(
    "timing",
    [{"HeartbeatSeconds": 5, "TimeoutSeconds": 3600}, {"TimeoutSeconds": 5}],
    ids=["heartbeat", "timeout"],
)
def test_an_unanswered_task_still_times_out_as_states_timeout(
    fast_stepfunctions: StepFunctionsClock, timing: dict[str, int]
) -> None:
    url = boto3.client("sqs").create_queue(QueueName="asks")["QueueUrl"]

    execution, described = run(_callback_machine(url, timing))

    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"])["error"]["Error"] == "States.Timeout"
    assert entered_states(boto3.client("stepfunctions"), execution) == ["Ask", "TimedOut"]


def test_an_answer_before_the_heartbeat_expires_wins(fast_stepfunctions: StepFunctionsClock) -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="asks")["QueueUrl"]
    sfn = boto3.client("stepfunctions")
    # 300 s heartbeat: 3 s of wall clock at the default scale, ample for the answer below.
    definition = _callback_machine(url, {"HeartbeatSeconds": 300, "TimeoutSeconds": 3600})
    machine = sfn.create_state_machine(name="ask", definition=json.dumps(definition), roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]

    (message,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    sfn.send_task_success(taskToken=json.loads(message["Body"])["token"], output=json.dumps({"answer": 42}))
    described = wait_for_execution(sfn, execution)

    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"answer": 42}
    assert entered_states(sfn, execution) == ["Ask", "Answered"]


def test_an_sqs_mapped_lambda_that_answers_inside_send_message_is_heard_with_a_heartbeat(
    fast_stepfunctions: StepFunctionsClock, lambda_runs_handlers: LambdaHarness
) -> None:
    # The consumer answers before SendMessage returns to the interpreter, i.e. before the task
    # waits; moto lost such an answer when HeartbeatSeconds was set (sfn_executes fixes that).
    answer = lambda_runs_handlers.create_function("answer", "tests.support.sample_handlers.answer_task_tokens")
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="asks")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("lambda").create_event_source_mapping(EventSourceArn=queue_arn, FunctionName=answer)
    definition = _callback_machine(url, {"HeartbeatSeconds": 300, "TimeoutSeconds": 3600})
    definition["States"]["Ask"]["Parameters"]["MessageBody"]["answer"] = 42

    execution, described = run(definition)

    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"answer": 42}
    assert entered_states(boto3.client("stepfunctions"), execution) == ["Ask", "Answered"]


def test_stopping_an_execution_interrupts_its_wait(fast_stepfunctions: StepFunctionsClock) -> None:
    sfn = boto3.client("stepfunctions")
    definition = {"StartAt": "Long", "States": {"Long": {"Type": "Wait", "Seconds": 86400, "End": True}}}
    machine = sfn.create_state_machine(name="long", definition=json.dumps(definition), roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]

    sfn.stop_execution(executionArn=execution, error="Operator", cause="no longer needed")

    assert wait_for_execution(sfn, execution)["status"] == "ABORTED"  # a scaled day would still be 864 s


def test_the_scale_is_read_at_each_wait_and_everything_is_undone_afterwards() -> None:
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction
    from moto.stepfunctions.parser.asl.eval.callback import callback

    originals = (WaitFunction._wait_interval, retrier_decl.time, callback.Event)
    clock = StepFunctionsClock(scale=0.5)
    with scaled_stepfunctions_time(clock):
        assert (WaitFunction._wait_interval, retrier_decl.time, callback.Event) != originals
        event = callback.Event()
        clock.scale = 0.001
        started = time.monotonic()
        assert event.wait(timeout=100) is False  # 100 s at 0.001: 0.1 s
        assert time.monotonic() - started < 5
        threading.Timer(0.05, event.set).start()
        assert event.wait(timeout=None) is True  # no timeout stays no timeout
    assert (WaitFunction._wait_interval, retrier_decl.time, callback.Event) == originals
