"""The reference worker: owns (project, user) pairs and runs the jobs the state machine sends.

``python -m handlers.job_claim.worker --container-id ID [--once]``; ``Worker`` is the same loop
for tests (as threads). Environment: ``JOB_CLAIM_OWNERSHIP_TABLE``, ``JOB_CLAIM_ACTIVE_JOBS_TABLE``,
``JOB_CLAIM_INPUT_QUEUE_URL``.

Protocol per message (FIFO cannot receive by group, so a worker receives any message and then
decides): acquire ownership of its pair (the shared claim primitive, token = container id,
lease 1 h; already ours -> extend; another live owner -> visibility 0, skip: that worker gets it;
reclaimable -> take over) -> the active-job row, written fenced on ownership -> ``run_job`` while
a heartbeat thread every ``heartbeat_seconds`` sends SendTaskHeartbeat, extends ownership (fenced:
a worker whose ownership was taken over can neither refresh nor release it), refreshes the row's
TTL and reads ``interrupt_requested_by`` (set -> stop). Outcomes:
- success: SendTaskSuccess(result), clear the row (if ours), delete the message;
- interrupted: partial work on the row, SendTaskFailure(PREEMPTED, cause=partial work JSON),
  clear the row, delete the message;
- the job raised: SendTaskFailure(JobFailed), clear the row, delete the message;
- lost (TaskTimedOut / InvalidToken / TaskDoesNotExist from any token call): stop, clear the row
  if ours, delete the message (a stale-token message must not block its FIFO group);
- ownership stolen mid-job: stop, clear the row if ours, visibility 0 (the new owner runs it).
Crash windows: a crash before the delete leaves the message invisible until the queue's
visibility timeout, then it is received again; its token is then answered (duplicate answers
get InvalidToken -> lost -> deleted) or timed out by the state machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from handlers.common.aws import client
from handlers.common.claims import Acquire, Claim, ClaimLocation, ClaimStore, Write
from handlers.common.config import EnvReader
from handlers.common.dynamo_items import serialize_values
from handlers.job_claim import schema
from handlers.job_claim.rows import delete_active_if_ours, set_on_active_if_ours

LOST_TOKEN_ERRORS = frozenset({"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"})
JOB_FAILED = "JobFailed"

log = logging.getLogger("handlers.job_claim.worker")

RunJob = Callable[[Mapping[str, Any], Callable[[], bool]], dict[str, Any]]


def echo_job(message: Mapping[str, Any], should_stop: Callable[[], bool]) -> dict[str, Any]:
    """The default job: a summary of the instruction."""
    return {
        "messageId": message.get("messageId"),
        "pair": message.get("pair"),
        "summary": f"{message.get('subject', '')}: {len(str(message.get('body', '')))} characters",
        "attachments": len(message.get("attachments") or []),
    }


@dataclass(frozen=True)
class WorkerConfig:
    ownership_table: str
    active_jobs_table: str
    input_queue_url: str
    ownership_lease_ms: int = schema.OWNERSHIP_LEASE_SECONDS * 1000
    active_ttl_seconds: int = schema.ACTIVE_JOB_TTL_SECONDS
    heartbeat_seconds: float = 20.0
    receive_wait_seconds: int = 20
    # The input queue's visibility timeout (the construct's prop, 5 min): every heartbeat pushes
    # the message's visibility this far ahead, so a live job is never handed to a second worker,
    # and a crashed worker's message is visible again within this time.
    visibility_timeout_seconds: int = 300


def config_from_env(environ: Mapping[str, str] | None = None) -> WorkerConfig:
    env = EnvReader(environ)
    config = WorkerConfig(
        ownership_table=env.require(schema.ENV_OWNERSHIP_TABLE),
        active_jobs_table=env.require(schema.ENV_ACTIVE_JOBS_TABLE),
        input_queue_url=env.require(schema.ENV_INPUT_QUEUE_URL),
        heartbeat_seconds=float(env.integer("JOB_CLAIM_HEARTBEAT_SECONDS", 20, minimum=1, maximum=600)),
    )
    env.check("JobClaim worker")
    return config


@dataclass
class _Job:
    message: dict[str, Any]
    receipt_handle: str
    claim: Claim
    stop: threading.Event = field(default_factory=threading.Event)
    interrupted_by: str | None = None
    lost: bool = False
    ownership_lost: bool = False


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Worker:
    """One container: ``run_once`` handles at most one message; ``run`` loops until ``stop()``."""

    def __init__(
        self,
        container_id: str,
        config: WorkerConfig,
        *,
        run_job: RunJob = echo_job,
        sfn: Any = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if not container_id:
            raise ValueError("a worker needs a container id")
        self.container_id = container_id
        self.config = config
        self._run_job = run_job
        self._sfn = sfn
        kwargs: dict[str, Any] = {"token_factory": lambda: container_id}
        if clock_ms is not None:
            kwargs["clock"] = clock_ms
        self.claims = ClaimStore(**kwargs)
        self.owned: dict[str, Claim] = {}
        self._stopping = threading.Event()

    # -- clients -------------------------------------------------------------------------------

    @property
    def sfn(self) -> Any:
        return self._sfn if self._sfn is not None else client("stepfunctions")

    # -- ownership -----------------------------------------------------------------------------

    def _location(self, pair: str) -> ClaimLocation:
        return ClaimLocation(self.config.ownership_table, {schema.PAIR: {"S": pair}})

    def acquire_ownership(self, pair: str) -> Claim | None:
        """Own ``pair`` (already ours: extended); None while another worker's lease is live."""
        held = self.owned.get(pair)
        if held is not None and self.refresh_ownership(pair):
            return self.owned[pair]
        location = self._location(pair)
        result = self.claims.acquire(
            location,
            lease_ms=self.config.ownership_lease_ms,
            attributes={schema.TTL_ATTRIBUTE: self._ttl_after(self.config.ownership_lease_ms)},
        )
        if result.status is Acquire.ACQUIRED and result.claim is not None:
            self.owned[pair] = result.claim
            return result.claim
        current = result.current
        if result.status is Acquire.HELD and current is not None and current.token == self.container_id:
            # Ours already (e.g. this container restarted): adopt it and extend.
            claim = Claim(
                location,
                self.container_id,
                current.generation,
                current.lease_until_ms or 0,
                int(current.attributes.get("first_claimed_at_ms", 0)),
                previous=None,
            )
            self.owned[pair] = claim
            if self.refresh_ownership(pair):
                return self.owned[pair]
        return None

    def _ttl_after(self, lease_ms: int) -> int:
        return (self.claims.now_ms() + lease_ms) // 1000 + 60

    def refresh_ownership(self, pair: str) -> bool:
        """Extend our lease (fenced on the container id); False (and forgotten) when no longer ours."""
        claim = self.owned.get(pair)
        if claim is None:
            return False
        result = self.claims.extend(claim, lease_ms=self.config.ownership_lease_ms)
        if not result.ok:
            log.warning("ownership of %s lost (%s)", pair, result.status.value)
            self.owned.pop(pair, None)
            return False
        self._refresh_ownership_ttl(claim)
        return True

    def _refresh_ownership_ttl(self, claim: Claim) -> None:
        try:
            client("dynamodb").update_item(
                TableName=claim.location.table,
                Key=dict(claim.location.key),
                UpdateExpression="SET #ttl = :ttl",
                ConditionExpression="#token = :me AND #state = :pending",
                ExpressionAttributeNames={"#ttl": schema.TTL_ATTRIBUTE, "#token": "token", "#state": "state"},
                ExpressionAttributeValues=serialize_values(
                    {":ttl": self._ttl_after(self.config.ownership_lease_ms), ":me": claim.token, ":pending": "pending"}
                ),
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise

    def release_ownership(self, pair: str | None = None) -> dict[str, str]:
        """Give back our pairs (fenced: a pair taken over by another worker is left alone)."""
        pairs = [pair] if pair is not None else list(self.owned)
        outcomes: dict[str, str] = {}
        for name in pairs:
            claim = self.owned.pop(name, None)
            if claim is not None:
                outcomes[name] = self.claims.release(claim).status.value
        return outcomes

    # -- the loop ------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def run(self, *, once: bool = False) -> None:
        try:
            while not self._stopping.is_set():
                outcome = self.run_once()
                if once and outcome is not None:
                    break
        finally:
            self.release_ownership()

    def run_once(self, *, wait_seconds: int | None = None) -> str | None:
        """Receive one message and handle it; returns the outcome (None: nothing received)."""
        wait = self.config.receive_wait_seconds if wait_seconds is None else wait_seconds
        response = client("sqs").receive_message(
            QueueUrl=self.config.input_queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=wait
        )
        messages = response.get("Messages") or []
        if not messages:
            return None
        return self.handle(messages[0])

    def handle(self, sqs_message: Mapping[str, Any]) -> str:
        receipt = str(sqs_message["ReceiptHandle"])
        try:
            body = json.loads(sqs_message["Body"])
            pair = str(body["pair"])
            str(body["taskToken"])
            str(body["messageId"])
        except (ValueError, KeyError, TypeError):
            log.error("malformed input message %s; deleting it", sqs_message.get("MessageId"))
            self._delete(receipt)
            return "malformed"
        claim = self.acquire_ownership(pair)
        if claim is None:
            self._make_visible(receipt)
            return "skipped"
        job = _Job(message=body, receipt_handle=receipt, claim=claim)
        if not self._start_active(job):
            self.owned.pop(pair, None)
            self._make_visible(receipt)
            return "skipped"
        return self._run(job)

    # -- one job -------------------------------------------------------------------------------

    def _start_active(self, job: _Job) -> bool:
        now_ms = self.claims.now_ms()
        row = {
            schema.PAIR: job.message["pair"],
            schema.MESSAGE_ID: job.message["messageId"],
            schema.THREAD_ID: job.message.get("threadId") or job.message["messageId"],
            schema.ACTIVE_TASK_TOKEN: job.message["taskToken"],
            schema.ACTIVE_CONTAINER_ID: self.container_id,
            schema.ACTIVE_STARTED_AT_MS: now_ms,
            schema.TTL_ATTRIBUTE: now_ms // 1000 + self.config.active_ttl_seconds,
        }
        put = {"Put": {"TableName": self.config.active_jobs_table, "Item": serialize_values(row)}}
        result = self.claims.write_fenced(job.claim, [put])
        return result.status is Write.OK

    def _token_call(self, job: _Job, call: Callable[[], Any]) -> bool:
        try:
            call()
        except ClientError as exc:
            if _error_code(exc) in LOST_TOKEN_ERRORS:
                job.lost = True
                job.stop.set()
                return False
            raise
        return True

    def _beat(self, job: _Job) -> None:
        token = str(job.message["taskToken"])
        if not self._token_call(job, lambda: self.sfn.send_task_heartbeat(taskToken=token)):
            return
        client("sqs").change_message_visibility(
            QueueUrl=self.config.input_queue_url,
            ReceiptHandle=job.receipt_handle,
            VisibilityTimeout=self.config.visibility_timeout_seconds,
        )
        pair = str(job.message["pair"])
        if not self.refresh_ownership(pair):
            job.ownership_lost = True
            job.stop.set()
            return
        row = set_on_active_if_ours(
            self.config.active_jobs_table,
            pair,
            str(job.message["messageId"]),
            self.container_id,
            {schema.TTL_ATTRIBUTE: self.claims.now_ms() // 1000 + self.config.active_ttl_seconds},
        )
        if row is None:
            job.lost = True  # the row was removed (HandleTimeout) or replaced: the job is over
            job.stop.set()
            return
        if row.get(schema.ACTIVE_INTERRUPT_REQUESTED_BY):
            job.interrupted_by = str(row[schema.ACTIVE_INTERRUPT_REQUESTED_BY])
            job.stop.set()

    def _heartbeat_loop(self, job: _Job, done: threading.Event) -> None:
        while not done.wait(self.config.heartbeat_seconds):
            try:
                self._beat(job)
            except Exception:  # a transient failure: the next beat tries again
                log.exception("heartbeat failed for %s", job.message.get("messageId"))

    def _run(self, job: _Job) -> str:
        done = threading.Event()
        beats = threading.Thread(target=self._heartbeat_loop, args=(job, done), daemon=True)
        beats.start()
        result: dict[str, Any] | None = None
        failure: Exception | None = None
        try:
            result = self._run_job(job.message, job.stop.is_set)
        except Exception as exc:
            failure = exc
        finally:
            done.set()
            beats.join()
        token = str(job.message["taskToken"])
        if job.lost:
            outcome = "lost"
        elif job.ownership_lost:
            self._clear_active(job)
            self._make_visible(job.receipt_handle)
            return "ownership_lost"
        elif job.interrupted_by is not None:
            partial = json.dumps(result if result is not None else {}, default=str)
            self._write_partial(job, partial)
            sent = self._token_call(
                job, lambda: self.sfn.send_task_failure(taskToken=token, error=schema.PREEMPTED, cause=partial)
            )
            outcome = "preempted" if sent else "lost"
            if sent:
                # HandleInterruption reads the partial work from the row, then removes it.
                self._delete(job.receipt_handle)
                log.info("message %s: %s", job.message.get("messageId"), outcome)
                return outcome
        elif failure is not None:
            cause = f"{type(failure).__name__}: {failure}"[:32000]
            sent = self._token_call(
                job, lambda: self.sfn.send_task_failure(taskToken=token, error=JOB_FAILED, cause=cause)
            )
            outcome = "failed" if sent else "lost"
        else:
            output = json.dumps(result if result is not None else {}, default=str)
            sent = self._token_call(job, lambda: self.sfn.send_task_success(taskToken=token, output=output))
            outcome = "succeeded" if sent else "lost"
        self._clear_active(job)
        self._delete(job.receipt_handle)
        log.info("message %s: %s", job.message.get("messageId"), outcome)
        return outcome

    def _write_partial(self, job: _Job, partial: str) -> None:
        set_on_active_if_ours(
            self.config.active_jobs_table,
            str(job.message["pair"]),
            str(job.message["messageId"]),
            self.container_id,
            {schema.PARTIAL_WORK: partial},
        )

    def _clear_active(self, job: _Job) -> None:
        delete_active_if_ours(
            self.config.active_jobs_table, str(job.message["pair"]), str(job.message["messageId"]), self.container_id
        )

    def _delete(self, receipt: str) -> None:
        try:
            client("sqs").delete_message(QueueUrl=self.config.input_queue_url, ReceiptHandle=receipt)
        except ClientError as exc:
            if _error_code(exc) != "ReceiptHandleIsInvalid":
                raise

    def _make_visible(self, receipt: str) -> None:
        try:
            client("sqs").change_message_visibility(
                QueueUrl=self.config.input_queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
            )
        except ClientError as exc:
            if _error_code(exc) != "ReceiptHandleIsInvalid":
                raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The JobClaim reference worker.")
    parser.add_argument("--container-id", required=True)
    parser.add_argument("--once", action="store_true", help="handle one message, then release and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    worker = Worker(args.container_id, config_from_env())
    try:
        worker.run(once=args.once)
    except KeyboardInterrupt:
        worker.stop()


if __name__ == "__main__":
    main()
