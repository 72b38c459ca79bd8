"""Email faults: SES throttling and 5xx, rejected mail, and the claim/lease windows of the dedup marker.

moto's SES cannot throttle, so the throttling tests point boto3 at a local SES v2 endpoint
(tests/support/ses_stub.py) through the standard ``AWS_ENDPOINT_URL_SESV2`` variable; DynamoDB
and everything else stay on moto. The rejection tests use moto itself (an unverified sender is
rejected with MessageRejected, as SES does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from handlers.common.aws import reset_clients
from handlers.fanout.email import CLAIM_LEASE_MS
from tests.support.fanout_fixtures import RECIPIENT
from tests.support.fanout_stream import (
    EMAIL_SENDER,
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
