"""Email faults: SES throttling and 5xx, rejected mail, and the claim/lease windows of the dedup marker.

moto's SES cannot throttle, so the throttling tests point boto3 at a local SES v2 endpoint
(tests/support/ses_stub.py) through the standard ``AWS_ENDPOINT_URL_SESV2`` variable; DynamoDB
and everything else stay on moto. The rejection tests use moto itself (an unverified sender is
rejected with MessageRejected, as SES does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from handlers.common.aws import reset_clients
from handlers.common.claims import Claim, ClaimStore, WriteResult
from handlers.fanout.email import CLAIM_LEASE_MS, EmailDispatcher
from handlers.fanout.model import Outcome, RetryableError, TaskEvent
from tests.support.fanout_fixtures import RECIPIENT
from tests.support.fanout_stream import (
    EMAIL_SENDER,
    TASK_TABLE,
    FanOutTables,
    moto_sent_emails,
    redelivery,
    reported,
    sequence_numbers,
)
from tests.support.moto_server import MotoServer
from tests.support.ses_stub import SesStub

Invoke = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
def ses(fanout_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[SesStub]:
    with SesStub() as stub:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", stub.url)
        reset_clients()
        yield stub


def email_task(tables: FanOutTables, task_id: str, **extra: Any) -> None:
    """A task with email recipients and no PR: only the email channel has work."""
    row: dict[str, Any] = {
        "repo": "octo/widgets",
        "channel_source": "api",
        "channel_metadata": {},
        "notifications": {"email": {"recipients": [RECIPIENT]}},
    }
    tables.put_task(task_id, **{**row, **extra})


def email_marker(tables: FanOutTables, task_id: str, event_id: str) -> dict[str, Any] | None:
    return tables.task(task_id).get("channel_metadata", {}).get(f"email:{event_id}")


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "TooManyRequestsException"), (400, "LimitExceededException"), (500, "InternalFailure")],
)
def test_ses_throttling_and_5xx_are_retried_and_the_mail_is_sent_once(
    status: int, code: str, ses: SesStub, tables: FanOutTables, invoke: Invoke
) -> None:
    email_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_failed", metadata={"error_message": "OOM"})
    event = tables.next_batch()
    ses.fail_next(status, code, times=3)  # boto3's three attempts, all refused

    first = invoke(event)

    assert reported(first) == sequence_numbers(event)
    assert ses.sent == [] and ses.refused == [(status, code)] * 3
    marker = email_marker(tables, "t-1", "e1")
    assert marker is not None and marker["state"] == "released"  # SES sent nothing: claimable at once

    second = invoke(redelivery(event, first))

    assert reported(second) == []
    assert [(m.to, m.subject) for m in ses.sent] == [((RECIPIENT,), "[bgagent] Task t-1 failed")]
    assert "OOM" in ses.sent[0].text
    assert email_marker(tables, "t-1", "e1")["state"] == "sent"  # type: ignore[index]


def test_a_throttled_mail_does_not_hold_back_other_tasks(ses: SesStub, tables: FanOutTables, invoke: Invoke) -> None:
    email_task(tables, "slow")
    tables.put_event("slow", "e1", "task_completed")
    event = tables.next_batch()
    ses.fail_next(429, "TooManyRequestsException", times=3)
    first = invoke(event)
    email_task(tables, "fine")
    tables.put_event("fine", "e1", "task_completed")

    second = invoke(tables.next_batch())

    assert reported(first) == sequence_numbers(event)
    assert reported(second) == []
    assert [m.subject for m in ses.sent] == ["[bgagent] Task fine completed"]


def test_rejected_mail_is_terminal_and_never_retried(tables: FanOutTables, invoke: Invoke, aws: MotoServer) -> None:
    sesv2 = boto3.client("sesv2", endpoint_url=aws.endpoint)
    sesv2.delete_email_identity(EmailIdentity=EMAIL_SENDER)  # SES answers MessageRejected
    email_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()

    first = invoke(event)

    assert reported(first) == []
    assert moto_sent_emails(aws.endpoint) == []
    assert email_marker(tables, "t-1", "e1")["state"] == "rejected"  # type: ignore[index]

    sesv2.create_email_identity(EmailIdentity=EMAIL_SENDER)
    invoke(event)  # the same batch again (a sibling channel failed, say)

    assert moto_sent_emails(aws.endpoint) == []  # the terminal decision stands


def test_a_live_pending_claim_holds_the_record_with_retry_after(
    tables: FanOutTables, invoke: Invoke, aws: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Another invocation claimed the mail a moment ago and may be sending it right now.
    now = int(time.time() * 1000)
    email_task(
        tables,
        "t-1",
        channel_metadata={
            "email:e1": {
                "state": "pending",
                "token": "other",
                "generation": 1,
                "lease_until_ms": now + CLAIM_LEASE_MS,
                "claimed_at_ms": now,
            }
        },
    )
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()

    response = invoke(event)

    assert reported(response) == sequence_numbers(event)
    assert moto_sent_emails(aws.endpoint) == []
    warning = next(r for r in caplog.records if getattr(r, "channel", None) == "email")
    assert 0 < warning.__dict__["retry_after_seconds"] <= CLAIM_LEASE_MS / 1000


def test_an_expired_claim_is_taken_over_and_the_mail_sent(
    tables: FanOutTables, invoke: Invoke, aws: MotoServer
) -> None:
    # An invocation claimed the mail and crashed (before or after SES accepted it -- we cannot
    # know). After the lease a redelivery sends it: never lost, possibly twice (the documented
    # at-least-once edge; SES has no idempotency key).
    long_ago = int(time.time() * 1000) - 10 * CLAIM_LEASE_MS
    email_task(
        tables,
        "t-1",
        channel_metadata={
            "email:e1": {
                "state": "pending",
                "token": "crashed",
                "generation": 1,
                "lease_until_ms": long_ago + CLAIM_LEASE_MS,
                "claimed_at_ms": long_ago,
            }
        },
    )
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert [m["subject"] for m in moto_sent_emails(aws.endpoint)] == ["[bgagent] Task t-1 completed"]
    assert email_marker(tables, "t-1", "e1")["state"] == "sent"  # type: ignore[index]


def test_a_sent_marker_absorbs_a_redelivery(tables: FanOutTables, invoke: Invoke, aws: MotoServer) -> None:
    email_task(tables, "t-1", channel_metadata={"email:e1": {"state": "sent", "message_id": "m-1"}})
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert moto_sent_emails(aws.endpoint) == []


def test_a_task_row_without_channel_metadata_gets_one(tables: FanOutTables, invoke: Invoke, aws: MotoServer) -> None:
    tables.put_task("t-1", repo="octo/widgets", notifications={"email": {"recipients": [RECIPIENT]}})
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert len(moto_sent_emails(aws.endpoint)) == 1
    assert email_marker(tables, "t-1", "e1")["state"] == "sent"  # type: ignore[index]


# -- unknown outcomes: a failed confirm, a live claim of a send that got no answer -----------


def email_event(event_id: str = "e1", task_id: str = "t-1") -> TaskEvent:
    return TaskEvent(task_id=task_id, event_id=event_id, event_type="task_completed", timestamp="2026-11-23T14:00:00Z")


class ConfirmFailsFirst(ClaimStore):
    """The confirm write after SES accepted the mail gets no answer (the first ``times`` times)."""

    def __init__(self, error: Exception, times: int) -> None:
        super().__init__()
        self.error, self.left = error, times

    def confirm(self, claim: Claim, *, state: str, attributes: Mapping[str, Any] | None = None) -> WriteResult:
        if self.left > 0:
            self.left -= 1
            raise self.error
        return super().confirm(claim, state=state, attributes=attributes)


def after_the_lease() -> ClaimStore:
    """A container whose redelivery runs long after the first attempt's lease ended."""
    return ClaimStore(clock=lambda: int(time.time() * 1000) + 10 * CLAIM_LEASE_MS)


@pytest.mark.parametrize(
    "error",
    [
        ReadTimeoutError(endpoint_url="http://dynamodb.local"),
        ConnectionClosedError(endpoint_url="http://dynamodb.local"),
        EndpointConnectionError(endpoint_url="http://dynamodb.local"),
    ],
    ids=["read-timeout", "connection-closed", "connection-error"],
)
def test_a_confirm_without_answer_after_ses_accepted_never_causes_a_second_send(
    error: Exception, ses: SesStub, tables: FanOutTables
) -> None:
    email_task(tables, "t-1")
    dispatcher = EmailDispatcher(
        task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_store=ConfirmFailsFirst(error, 1)
    )

    assert dispatcher.dispatch(email_event(), tables.task("t-1")) is Outcome.DELIVERED
    # the record is redelivered (a sibling channel failed), even after the lease ran out
    again = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_store=after_the_lease())
    assert again.dispatch(email_event(), tables.task("t-1")) is Outcome.SKIPPED

    assert len(ses.sent) == 1
    assert email_marker(tables, "t-1", "e1")["state"] == "sent"  # type: ignore[index]


def test_a_confirm_that_keeps_failing_still_succeeds_and_a_redelivery_in_the_lease_does_not_resend(
    ses: SesStub, tables: FanOutTables, caplog: pytest.LogCaptureFixture
) -> None:
    email_task(tables, "t-1")
    store = ConfirmFailsFirst(ReadTimeoutError(endpoint_url="http://dynamodb.local"), 100)
    dispatcher = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_store=store)

    assert dispatcher.dispatch(email_event(), tables.task("t-1")) is Outcome.DELIVERED
    assert "FANOUT_EMAIL_CONFIRM_FAILED" in [getattr(r, "error_id", None) for r in caplog.records]

    fresh = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_wait_seconds=0.2)
    with pytest.raises(RetryableError):
        fresh.dispatch(email_event(), tables.task("t-1"))
    assert len(ses.sent) == 1


def live_claim(lease_left_ms: int) -> dict[str, Any]:
    """What an attempt whose SendEmail got no answer (read timeout) leaves: a pending claim."""
    now = int(time.time() * 1000)
    return {
        "email:e1": {
            "state": "pending",
            "token": "send-timed-out",
            "generation": 1,
            "lease_until_ms": now + lease_left_ms,
            "claimed_at_ms": now - 5_000,
            "first_claimed_at_ms": now - 5_000,
        }
    }


def test_a_redelivery_waits_for_a_live_claim_and_sends_once_its_lease_ends(ses: SesStub, tables: FanOutTables) -> None:
    email_task(tables, "t-1", channel_metadata=live_claim(1_000))
    dispatcher = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_wait_seconds=5)

    started = time.monotonic()
    assert dispatcher.dispatch(email_event(), tables.task("t-1")) is Outcome.DELIVERED

    assert time.monotonic() - started >= 0.9  # it waited for the lease instead of failing at once
    assert len(ses.sent) == 1  # at-least-once: the outcome of the timed-out send was unknown
    assert email_marker(tables, "t-1", "e1")["state"] == "sent"  # type: ignore[index]


def test_a_live_claim_that_outlasts_the_wait_fails_retryably_with_the_lease_left(
    ses: SesStub, tables: FanOutTables
) -> None:
    email_task(tables, "t-1", channel_metadata=live_claim(30_000))
    dispatcher = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_wait_seconds=0.5)

    started = time.monotonic()
    with pytest.raises(RetryableError, match="still held") as raised:
        dispatcher.dispatch(email_event(), tables.task("t-1"))

    assert 0.45 <= time.monotonic() - started < 5  # bounded: it waited, but not for the whole lease
    assert raised.value.retry_after_seconds is not None and 25 <= raised.value.retry_after_seconds <= 30
    assert ses.sent == []
