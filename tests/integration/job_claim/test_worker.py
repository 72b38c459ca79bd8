"""The reference worker against moto: ownership races and fencing, and real task tokens.

Token tests start a real moto execution (``sfn_executes``) whose task is
``sqs:sendMessage.waitForTaskToken`` to the input FIFO queue (group = pair), so the worker answers
real tokens: success, PREEMPTED after an interrupt, and a token that timed out ("lost").
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import boto3
import pytest

from handlers.job_claim import schema
from handlers.job_claim.worker import Worker, WorkerConfig
from tests.integration.job_claim.conftest import FakeContext, JobClaimEnv
from tests.support.claim_tables import FakeClock
from tests.support.fast_stepfunctions import wait_for_execution
from tests.support.moto_server import MotoServer

PAIR = "acme#bob"
ROLE = "arn:aws:iam::123456789012:role/sfn"


def config(env: JobClaimEnv, **overrides: Any) -> WorkerConfig:
    values: dict[str, Any] = {
        "ownership_table": env.tables.ownership,
        "active_jobs_table": env.tables.active_jobs,
        "input_queue_url": env.input_queue_url,
        "heartbeat_seconds": 0.1,
        "receive_wait_seconds": 1,
    }
    values.update(overrides)
    return WorkerConfig(**values)


def ownership_row(env: JobClaimEnv) -> dict[str, Any] | None:
    item = (
        boto3.client("dynamodb")
        .get_item(TableName=env.tables.ownership, Key={schema.PAIR: {"S": PAIR}}, ConsistentRead=True)
        .get("Item")
    )
    return dict(item) if item else None


def active_row(env: JobClaimEnv) -> dict[str, Any] | None:
    item = (
        boto3.client("dynamodb")
        .get_item(TableName=env.tables.active_jobs, Key={schema.PAIR: {"S": PAIR}}, ConsistentRead=True)
        .get("Item")
    )
    return dict(item) if item else None


# -- ownership -------------------------------------------------------------------------------------


def test_two_workers_racing_for_one_pair_make_one_owner(job_claim: JobClaimEnv) -> None:
    for round_ in range(5):
        pair = f"acme#race{round_}"
        workers = [Worker(f"c-{i}", config(job_claim)) for i in range(2)]
        barrier = threading.Barrier(len(workers))
        won: dict[str, bool] = {}

        def race(
            worker: Worker, pair: str = pair, barrier: threading.Barrier = barrier, won: dict[str, bool] = won
        ) -> None:
            barrier.wait()
            won[worker.container_id] = worker.acquire_ownership(pair) is not None

        threads = [threading.Thread(target=race, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(won.values()) == [False, True]
        (winner,) = [c for c, ok in won.items() if ok]
        item = boto3.client("dynamodb").get_item(
            TableName=job_claim.tables.ownership, Key={schema.PAIR: {"S": pair}}, ConsistentRead=True
        )["Item"]
        assert item["token"] == {"S": winner} and item["state"] == {"S": "pending"}


def test_a_worker_that_lost_ownership_cannot_refresh_or_release_the_new_owners(job_claim: JobClaimEnv) -> None:
    clock = FakeClock()
    old = Worker("c-old", config(job_claim, ownership_lease_ms=10_000), clock_ms=clock)
    new = Worker("c-new", config(job_claim), clock_ms=clock)
    stale = old.acquire_ownership(PAIR)
    assert stale is not None
    assert new.acquire_ownership(PAIR) is None  # live lease: not yet
    clock.advance(10_001)
    taken = new.acquire_ownership(PAIR)
    assert taken is not None and taken.takeover

    assert old.refresh_ownership(PAIR) is False  # fenced: the token is no longer c-old
    old.owned[PAIR] = stale
    assert old.release_ownership() == {PAIR: "stolen"}
    row = ownership_row(job_claim)
    assert row is not None and row["token"] == {"S": "c-new"} and row["state"] == {"S": "pending"}
    assert int(row["lease_until_ms"]["N"]) == taken.lease_until_ms

    assert new.release_ownership() == {PAIR: "ok"}
    row = ownership_row(job_claim)
    assert row is not None and row["state"] == {"S": "released"}


def test_a_message_of_a_pair_owned_by_another_live_worker_is_left_for_it(job_claim: JobClaimEnv) -> None:
    owner, other = Worker("c-owner", config(job_claim)), Worker("c-other", config(job_claim))
    assert owner.acquire_ownership(PAIR) is not None
    body = {"taskToken": "t", "messageId": "m1", "pair": PAIR, "threadId": "t1"}
    boto3.client("sqs").send_message(
        QueueUrl=job_claim.input_queue_url, MessageBody=json.dumps(body), MessageGroupId=PAIR
    )
    assert other.run_once(wait_seconds=1) == "skipped"
    assert active_row(job_claim) is None
    received = boto3.client("sqs").receive_message(QueueUrl=job_claim.input_queue_url, WaitTimeSeconds=1)
    assert json.loads(received["Messages"][0]["Body"]) == body  # visible again at once


# -- real task tokens ------------------------------------------------------------------------------


def start_job(env: JobClaimEnv, message_id: str, thread_id: str, *, heartbeat: int = 60) -> str:
    sfn = boto3.client("stepfunctions")
    definition = {
        "StartAt": "RouteToProjectQueue",
        "States": {
            "RouteToProjectQueue": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
                "HeartbeatSeconds": heartbeat,
                "TimeoutSeconds": 3600,
                "Parameters": {
                    "QueueUrl": env.input_queue_url,
                    "MessageGroupId.$": "$.pair",
                    "MessageBody": {
                        "taskToken.$": "$$.Task.Token",
                        "messageId.$": "$.messageId",
                        "pair.$": "$.pair",
                        "threadId.$": "$.threadId",
                        "project": "acme",
                        "user": "bob",
                        "subject": "Build",
                        "body": "Please build it.",
                        "attachments": [],
                    },
                },
                "End": True,
            }
        },
    }
    machines = sfn.list_state_machines()["stateMachines"]
    name = f"jc-worker-{heartbeat}"
    arn = next((m["stateMachineArn"] for m in machines if m["name"] == name), None)
    if arn is None:
        arn = sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=ROLE)["stateMachineArn"]
    execution = sfn.start_execution(
        stateMachineArn=arn,
        name=message_id,
        input=json.dumps({"messageId": message_id, "pair": PAIR, "threadId": thread_id}),
    )
    return str(execution["executionArn"])


def queue_is_empty(env: JobClaimEnv) -> bool:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=env.input_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        attributes["ApproximateNumberOfMessages"] == "0" and attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
    )


def test_the_worker_completes_a_job_with_send_task_success(job_claim: JobClaimEnv, sfn_executes: MotoServer) -> None:
    execution = start_job(job_claim, "m1", "t1")
    worker = Worker("c-1", config(job_claim))
    assert worker.run_once(wait_seconds=5) == "succeeded"
    described = wait_for_execution(boto3.client("stepfunctions"), execution)
    assert described["status"] == "SUCCEEDED"
    output = json.loads(described["output"])
    assert output["messageId"] == "m1" and output["pair"] == PAIR
    assert active_row(job_claim) is None and queue_is_empty(job_claim)
    row = ownership_row(job_claim)
    assert row is not None and row["token"] == {"S": "c-1"} and row["state"] == {"S": "pending"}
    worker.release_ownership()
    row = ownership_row(job_claim)
    assert row is not None and row["state"] == {"S": "released"}


def test_an_interrupt_preempts_the_job_with_its_partial_work(
    job_claim: JobClaimEnv, sfn_executes: MotoServer, load_handler: Callable[[str], ModuleType]
) -> None:
    started = threading.Event()

    def slow_job(message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        steps = 0
        started.set()
        deadline = time.monotonic() + 10
        while not should_stop() and time.monotonic() < deadline:
            steps += 1
            time.sleep(0.02)
        return {"steps": steps, "stopped": should_stop()}

    execution = start_job(job_claim, "m1", "t1")
    worker = Worker("c-1", config(job_claim), run_job=slow_job)
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run_once(wait_seconds=5)))
    thread.start()
    assert started.wait(5)
    row = active_row(job_claim)
    assert row is not None and row[schema.MESSAGE_ID] == {"S": "m1"} and row[schema.ACTIVE_CONTAINER_ID] == {"S": "c-1"}

    check = load_handler("check_active_job").handler({"pair": PAIR, "threadId": "t2", "messageId": "m2"}, FakeContext())
    assert check["interruptSent"] is True and check["containerId"] == "c-1"
    thread.join(10)

    assert outcome == ["preempted"]
    described = wait_for_execution(boto3.client("stepfunctions"), execution)
    assert described["status"] == "FAILED" and described.get("error") == schema.PREEMPTED
    # The row stays, with the partial work, for HandleInterruption (which records and removes it).
    row = active_row(job_claim)
    assert row is not None and schema.PARTIAL_WORK in row and queue_is_empty(job_claim)


def test_a_timed_out_token_is_lost_and_its_message_deleted(job_claim: JobClaimEnv, sfn_executes: MotoServer) -> None:
    def stalled_job(message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        time.sleep(2.0)  # no heartbeat in time: the task's 1 s heartbeat times out
        return {"late": True}

    execution = start_job(job_claim, "m1", "t1", heartbeat=1)
    worker = Worker("c-1", config(job_claim, heartbeat_seconds=30), run_job=stalled_job)
    assert worker.run_once(wait_seconds=5) == "lost"
    described = wait_for_execution(boto3.client("stepfunctions"), execution)
    assert described["status"] == "FAILED" and described.get("error") == "States.Timeout"
    assert active_row(job_claim) is None and queue_is_empty(job_claim)


@pytest.mark.parametrize("error", ["TaskTimedOut", "InvalidToken", "TaskDoesNotExist"])
def test_every_lost_token_error_deletes_the_message(job_claim: JobClaimEnv, error: str) -> None:
    from botocore.exceptions import ClientError

    class LostTokens:
        def _lost(self, **_: Any) -> None:
            raise ClientError({"Error": {"Code": error, "Message": "gone"}}, "SendTaskSuccess")

        send_task_success = send_task_failure = send_task_heartbeat = _lost

    body = {"taskToken": "t", "messageId": "m1", "pair": PAIR, "threadId": "t1"}
    boto3.client("sqs").send_message(
        QueueUrl=job_claim.input_queue_url, MessageBody=json.dumps(body), MessageGroupId=PAIR
    )
    worker = Worker("c-1", config(job_claim), sfn=LostTokens())
    assert worker.run_once(wait_seconds=1) == "lost"
    assert active_row(job_claim) is None and queue_is_empty(job_claim)


class RecordingTokens:
    """A token client that accepts every call and remembers it (for tests of ownership, not tokens)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def send_task_heartbeat(self, **kwargs: Any) -> None:
        self.calls.append(("heartbeat", kwargs))

    def send_task_success(self, **kwargs: Any) -> None:
        self.calls.append(("success", kwargs))

    def send_task_failure(self, **kwargs: Any) -> None:
        self.calls.append(("failure", kwargs))


def test_a_worker_whose_ownership_is_taken_over_mid_job_stops_and_leaves_the_new_owner_alone(
    job_claim: JobClaimEnv,
) -> None:
    started = threading.Event()

    def waiting_job(message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        started.set()
        deadline = time.monotonic() + 10
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"stopped": should_stop()}

    tokens = RecordingTokens()
    old = Worker("c-old", config(job_claim), run_job=waiting_job, sfn=tokens)
    # The new owner's clock is 2 h ahead: to it, c-old's 1 h lease has run out.
    new = Worker("c-new", config(job_claim), clock_ms=lambda: time.time_ns() // 1_000_000 + 2 * 3600 * 1000)
    body = {"taskToken": "t", "messageId": "m1", "pair": PAIR, "threadId": "t1"}
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=job_claim.input_queue_url, MessageBody=json.dumps(body), MessageGroupId=PAIR)
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(old.run_once(wait_seconds=1)))
    thread.start()
    assert started.wait(5)
    assert new.acquire_ownership(PAIR) is not None
    thread.join(10)

    assert outcome == ["ownership_lost"]
    assert not [name for name, _ in tokens.calls if name != "heartbeat"]  # the token is left to the new owner
    row = ownership_row(job_claim)
    assert row is not None and row["token"] == {"S": "c-new"} and row["state"] == {"S": "pending"}
    assert old.release_ownership() == {}
    assert active_row(job_claim) is None
    received = sqs.receive_message(QueueUrl=job_claim.input_queue_url, WaitTimeSeconds=1)
    assert json.loads(received["Messages"][0]["Body"]) == body  # visible again for the new owner


def test_a_job_whose_active_row_was_removed_stops_as_lost(job_claim: JobClaimEnv) -> None:
    started = threading.Event()

    def waiting_job(message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        started.set()
        deadline = time.monotonic() + 10
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {}

    worker = Worker("c-1", config(job_claim), run_job=waiting_job, sfn=RecordingTokens())
    body = {"taskToken": "t", "messageId": "m1", "pair": PAIR, "threadId": "t1"}
    boto3.client("sqs").send_message(
        QueueUrl=job_claim.input_queue_url, MessageBody=json.dumps(body), MessageGroupId=PAIR
    )
    outcome: list[str | None] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run_once(wait_seconds=1)))
    thread.start()
    assert started.wait(5)
    boto3.client("dynamodb").delete_item(TableName=job_claim.tables.active_jobs, Key={schema.PAIR: {"S": PAIR}})
    thread.join(10)
    assert outcome == ["lost"] and queue_is_empty(job_claim)


def test_a_failing_job_sends_task_failure_and_deletes_its_message(job_claim: JobClaimEnv) -> None:
    def failing_job(message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        raise RuntimeError("boom")

    tokens = RecordingTokens()
    worker = Worker("c-1", config(job_claim), run_job=failing_job, sfn=tokens)
    body = {"taskToken": "t", "messageId": "m1", "pair": PAIR, "threadId": "t1"}
    boto3.client("sqs").send_message(
        QueueUrl=job_claim.input_queue_url, MessageBody=json.dumps(body), MessageGroupId=PAIR
    )
    assert worker.run_once(wait_seconds=1) == "failed"
    assert tokens.calls[-1] == ("failure", {"taskToken": "t", "error": "JobFailed", "cause": "RuntimeError: boom"})
    assert active_row(job_claim) is None and queue_is_empty(job_claim)
