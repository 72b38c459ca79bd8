"""JobClaim end to end: the synthesized construct deployed into moto, emails stored the way SES
stores them, the intake and every step function running our handlers inside moto, the state
machine run by moto's ASL interpreter (waits compressed), reference workers as threads.

Assertions are on what happened to each message (completed, preempted and recorded, timed out
into the DLQ) and on ownership, never on call counts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import boto3
import pytest

from handlers.job_claim import schema
from handlers.job_claim.worker import Worker, WorkerConfig, echo_job
from tests.support.fast_stepfunctions import entered_states
from tests.support.job_claim_deployment import EMAIL_DOMAIN, JobClaimDeployment

pytest_plugins = ["tests.support.job_claim_deployment"]


def email(
    message_id: str,
    *,
    project: str = "atlas",
    user: str = "ana",
    subject: str = "please run",
    body: str = "do the thing",
    references: str | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = "requester@example.com"
    message["To"] = f"{project}+{user}@{EMAIL_DOMAIN}"
    message["Subject"] = subject
    message["Message-ID"] = f"<{message_id}>"
    if references:
        message["References"] = f"<{references}>"
    message.set_content(body)
    return bytes(message)


def wait_until(condition: Callable[[], Any], *, within: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def finished(job_claim: JobClaimDeployment, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        executions = job_claim.executions()
        if len(executions) >= count and all(e["status"] != "RUNNING" for e in executions):
            return executions
        return None

    return list(wait_until(done, what=f"{count} finished executions"))


def states_of(execution: dict[str, Any]) -> list[str]:
    return entered_states(boto3.client("stepfunctions"), execution["executionArn"])


class Workers:
    """Reference workers running in threads until the test ends."""

    def __init__(self, job_claim: JobClaimDeployment) -> None:
        self._job_claim = job_claim
        self._running: list[tuple[Worker, threading.Thread]] = []

    def start(self, container_id: str, run_job: Callable[..., dict[str, Any]] = echo_job) -> Worker:
        environment = self._job_claim.worker_environment()
        config = WorkerConfig(
            ownership_table=environment[schema.ENV_OWNERSHIP_TABLE],
            active_jobs_table=environment[schema.ENV_ACTIVE_JOBS_TABLE],
            input_queue_url=environment[schema.ENV_INPUT_QUEUE_URL],
            heartbeat_seconds=0.2,  # the state machine's 60 s heartbeat runs at 0.6 s here
            receive_wait_seconds=1,
        )
        worker = Worker(container_id, config, run_job=run_job)
        thread = threading.Thread(target=worker.run, name=f"worker-{container_id}", daemon=True)
        thread.start()
        self._running.append((worker, thread))
        return worker

    def stop(self) -> None:
        for worker, _ in self._running:
            worker.stop()
        for _, thread in self._running:
            thread.join(timeout=10)


@pytest.fixture
def workers(job_claim: JobClaimDeployment) -> Iterator[Workers]:
    running = Workers(job_claim)
    yield running
    running.stop()


def _item(job_claim: JobClaimDeployment, role: str, key: dict[str, str]) -> dict[str, Any] | None:
    answer = boto3.client("dynamodb").get_item(
        TableName=job_claim.table(role), Key={k: {"S": v} for k, v in key.items()}, ConsistentRead=True
    )
    return answer.get("Item")


def test_an_unowned_message_is_claimed_by_a_worker_that_takes_ownership_and_completes_it(
    job_claim: JobClaimDeployment, workers: Workers
) -> None:
    workers.start("container-a")
    job_claim.deliver_email(email("m-1@example.com"), "m-1")

    (execution,) = finished(job_claim, 1)

    assert execution["status"] == "SUCCEEDED"
    states = states_of(execution)
    assert "RouteUnowned" in states and "RequestClaim" in states and states[-1] == "JobCompleted"
    owner = _item(job_claim, "ownership", {schema.PAIR: "atlas#ana"})
    assert owner is not None and owner["token"]["S"] == "container-a"
    # Announced once as unclaimed (rate limited), never turned into ownership by the announcement.
    claim_request = _item(job_claim, "claim_requests", {schema.PAIR: "atlas#ana"})
    assert claim_request is not None


def test_an_owned_message_goes_straight_to_the_owner_with_one_lambda_invocation(
    job_claim: JobClaimDeployment, workers: Workers
) -> None:
    workers.start("container-a")
    job_claim.deliver_email(email("m-1@example.com"), "m-1")
    finished(job_claim, 1)
    before = len(job_claim.harness.invocations)

    job_claim.deliver_email(email("m-2@example.com"), "m-2")
    executions = finished(job_claim, 2)

    second = next(e for e in executions if "m-2" in e["name"])
    assert second["status"] == "SUCCEEDED"
    states = states_of(second)
    assert "RouteToProjectQueue" in states and "RouteUnowned" not in states
    invoked = [i.function_name for i in job_claim.harness.invocations[before:]]
    # The intake (S3's notification) and ParseEmail: the flow itself ran one Lambda.
    assert sorted(name.split("Function")[0] for name in invoked) == ["JobClaimIntake", "JobClaimParseEmail"]


def test_a_duplicate_notification_starts_one_execution(job_claim: JobClaimDeployment, workers: Workers) -> None:
    workers.start("container-a")
    raw = email("dup@example.com")
    job_claim.deliver_email(raw, "dup-1")
    job_claim.deliver_email(raw, "dup-2")  # SES retried the delivery: a second object, same Message-ID

    executions = finished(job_claim, 1)
    time.sleep(0.5)
    assert len(job_claim.executions()) == 1 and executions[0]["status"] == "SUCCEEDED"


def test_a_message_on_another_thread_interrupts_the_running_job(
    job_claim: JobClaimDeployment, workers: Workers
) -> None:
    started = threading.Event()

    def long_job(message: dict[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        if message["messageId"] != "first@example.com":
            return {"done": message["messageId"]}
        started.set()
        steps = 0
        while not should_stop():
            steps += 1
            time.sleep(0.02)
        return {"steps": steps}

    workers.start("container-a", run_job=long_job)
    job_claim.deliver_email(email("first@example.com"), "first")
    wait_until(started.is_set, what="the first job to start")

    job_claim.deliver_email(email("second@example.com", subject="new thread"), "second")
    executions = finished(job_claim, 2)

    first = next(e for e in executions if "first" in e["name"])
    second = next(e for e in executions if "second" in e["name"])
    assert "HandleInterruption" in states_of(first) and states_of(first)[-1] == "InterruptionComplete"
    assert first["status"] == "SUCCEEDED"
    assert "CheckActiveJob" in states_of(second)
    interruption = _item(job_claim, "interruptions", {schema.MESSAGE_ID: "first@example.com"})
    assert interruption is not None and json.loads(interruption[schema.PARTIAL_WORK]["S"])["steps"] > 0
    thread = _item(job_claim, "threads", {schema.THREAD_ID: "first@example.com"})
    assert thread is not None and thread[schema.THREAD_INTERRUPTION_COUNT]["N"] == "1"


def test_a_reply_on_the_same_thread_does_not_interrupt(job_claim: JobClaimDeployment, workers: Workers) -> None:
    workers.start("container-a")
    job_claim.deliver_email(email("root@example.com"), "root")
    finished(job_claim, 1)
    job_claim.deliver_email(email("reply@example.com", references="root@example.com"), "reply")
    executions = finished(job_claim, 2)
    assert all(e["status"] == "SUCCEEDED" for e in executions)
    assert _item(job_claim, "interruptions", {schema.MESSAGE_ID: "root@example.com"}) is None


def test_a_worker_that_stops_heartbeating_times_out_into_the_dlq_with_no_owner_needed(
    job_claim: JobClaimDeployment,
) -> None:
    # No worker at all: the message waits with its task token until the heartbeat runs out.
    job_claim.clock.scale = 0.01
    job_claim.deliver_email(email("lonely@example.com"), "lonely")

    (execution,) = finished(job_claim, 1)

    assert execution["status"] == "FAILED"
    assert "HandleTimeout" in states_of(execution) and states_of(execution)[-1] == "JobTimedOut"
    (dead,) = job_claim.dlq_messages()
    assert dead["error"]["Error"] == "States.Timeout" and dead["execution"] == execution["executionArn"]
    assert dead["input"]["messageId"] == "lonely@example.com"
    assert _item(job_claim, "interruptions", {schema.MESSAGE_ID: "lonely@example.com"}) is not None


def test_a_malformed_email_takes_the_dlq_path_with_the_reason(job_claim: JobClaimDeployment) -> None:
    message = EmailMessage()
    message["From"] = "someone@example.com"
    message["To"] = f"nobody@{EMAIL_DOMAIN}"  # names no project+user
    message["Message-ID"] = "<bad@example.com>"
    message.set_content("hello")
    job_claim.deliver_email(bytes(message), "bad")

    (execution,) = finished(job_claim, 1)

    assert execution["status"] == "FAILED"
    assert states_of(execution)[-2:] == ["SendToEmailDlq", "IntakeProcessingFailed"]
    (dead,) = job_claim.dlq_messages()
    assert dead["error"]["Error"] == "UnroutableEmailError"
    assert dead["input"]["messageId"] == "bad@example.com" and dead["execution"] == execution["executionArn"]
    assert json.dumps(dead).count("project+user") >= 1


def test_attachments_are_stored_by_the_map_and_reach_the_worker(
    job_claim: JobClaimDeployment, workers: Workers
) -> None:
    seen: list[dict[str, Any]] = []

    def keep(message: dict[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
        seen.append(message)
        return {"ok": True}

    workers.start("container-a", run_job=keep)
    message = EmailMessage()
    message["From"] = "requester@example.com"
    message["To"] = f"atlas+ana@{EMAIL_DOMAIN}"
    message["Message-ID"] = "<with-files@example.com>"
    message.set_content("see attached")
    message.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="data.csv")
    message.add_attachment(b"\x89PNG....", maintype="image", subtype="png", filename="../../etc/shot.png")
    job_claim.deliver_email(bytes(message), "with-files")

    (execution,) = finished(job_claim, 1)

    assert execution["status"] == "SUCCEEDED" and "ProcessAttachments" in states_of(execution)
    keys = sorted(
        o["Key"]
        for o in boto3.client("s3").list_objects_v2(Bucket=job_claim.bucket, Prefix="attachments/").get("Contents", [])
    )
    assert len(keys) == 2 and all("/" not in key.split("/", 2)[2] for key in keys)  # no path from a file name
    (delivered,) = seen
    assert [a["filename"] for a in delivered["attachments"]] == ["data.csv", "../../etc/shot.png"]
