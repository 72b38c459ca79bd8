"""The invocation deadline (issue #8 item 7): every wait, retry and outside call is bounded by
the time Lambda has left; records that cannot start are reported without running; a record cut
off in flight stops where its claims let the redelivery continue -- nothing lost, nothing twice.

The handler runs with a small fake Lambda context (a few seconds) against slow local stubs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from handlers.common.aws import reset_clients
from handlers.fanout.deadline import DEFAULT_SAFETY_MARGIN_SECONDS, Deadline, DeadlineExceededError
from handlers.fanout.email import SEND_BUDGET_SECONDS, EmailDispatcher
from handlers.fanout.model import RetryableError, TaskEvent
from handlers.fanout.slack import DEFAULT_HTTP_TIMEOUT_SECONDS, POST_MARGIN_MS
from tests.support.fanout_fixtures import PR_NUMBER, RECIPIENT, REPO, pr_task
from tests.support.fanout_stream import (
    EMAIL_SENDER,
    TASK_TABLE,
    FakeLambdaContext,
    FanOutTables,
    moto_sent_emails,
    redelivery,
    reported,
    sequence_numbers,
)
from tests.support.github_stub import GitHubStub
from tests.support.moto_server import MotoServer
from tests.support.ses_stub import SesStub
from tests.support.slack_fixtures import (
    SlackWorld,
    make_event,
    slack_stub_fixture,  # noqa: F401  (fixture)
    slack_world_fixture,  # noqa: F401  (fixture)
)

WARM_UP_PR = 99
SLACK_POST_BUDGET_SECONDS = DEFAULT_HTTP_TIMEOUT_SECONDS + POST_MARGIN_MS / 1000


def run(fanout: ModuleType, event: dict[str, Any], timeout_ms: int = 60_000) -> tuple[dict[str, Any], float]:
    """One invocation with ``timeout_ms`` left; returns the response and its wall time."""
    started = time.monotonic()
    response = dict(fanout.handler(event, FakeLambdaContext(timeout_ms=timeout_ms)))
    return response, time.monotonic() - started


def warm_up(tables: FanOutTables, fanout: ModuleType) -> None:
    """A first invocation on another PR: clients, connection pools and the token cache exist
    afterwards, as in a warm container (on a loaded test machine, creating them takes ~1 s)."""
    pr_task(tables, "warm-up", pr_number=WARM_UP_PR)
    tables.put_event("warm-up", "e1", "pr_created")
    response, _ = run(fanout, tables.next_batch())
    assert reported(response) == []


def ours(requests: list[Any]) -> list[Any]:
    return [r for r in requests if f"/issues/{WARM_UP_PR}/" not in r.path]


# -- the handler, end to end -----------------------------------------------------------------


def test_records_that_cannot_start_in_time_are_reported_and_the_redelivery_does_each_once(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, aws: MotoServer
) -> None:
    warm_up(tables, fanout)
    pr_task(tables, "a")
    pr_task(tables, "b", pr_number=8)
    pr_url = {"pr_url": "https://github.com/octo/widgets/pull/7"}
    tables.put_event("a", "e1", "pr_created", metadata=pr_url)
    tables.put_event("a", "e2", "pr_created", metadata=pr_url)
    tables.put_event("b", "e1", "pr_created", metadata=pr_url)
    tables.put_event("a", "e3", "task_completed", metadata=pr_url)
    event = tables.next_batch()
    seq_a1, seq_a2, _, seq_a3 = sequence_numbers(event)
    github.delay_seconds = 1.2  # each GitHub answer; a first comment takes two (list, create)

    first, elapsed = run(fanout, event, timeout_ms=4_000)

    assert elapsed < 4.0 - DEFAULT_SAFETY_MARGIN_SECONDS / 2  # returned, with time to spare
    # a/e1 and b/e1 fit (2.4 s of GitHub each); a/e2 cannot start in what is left, a/e3 waits behind it
    assert reported(first) == [seq_a2, seq_a3]
    assert seq_a1 not in reported(first)
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1 and len(github.comments_on(REPO, 8)) == 1
    assert moto_sent_emails(aws.endpoint) == []  # a/e3 (the mail) never started

    github.delay_seconds = 0.0
    second, _ = run(fanout, redelivery(event, first))  # a/e2, b/e1 (already done), a/e3

    assert reported(second) == []
    comments = github.comments_on(REPO, PR_NUMBER)
    assert len(comments) == 1 and "Completed" in comments[0] and "`e3`" in comments[0]
    assert len(github.comments_on(REPO, 8)) == 1
    assert len(ours(github.received("POST"))) == 2  # one comment per task, never a second
    assert [m["subject"] for m in moto_sent_emails(aws.endpoint)] == ["[bgagent] Task a completed"]
    assert tables.task("a")["channel_metadata"]["email:e3"]["state"] == "sent"


def test_an_invocation_without_time_to_start_reports_every_record_and_does_nothing(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType, aws: MotoServer
) -> None:
    pr_task(tables, "a")
    tables.put_event("a", "e1", "task_completed")
    event = tables.next_batch()

    response, _ = run(fanout, event, timeout_ms=int(DEFAULT_SAFETY_MARGIN_SECONDS * 1000))

    assert reported(response) == sequence_numbers(event)
    assert github.received() == [] and moto_sent_emails(aws.endpoint) == []
    assert tables.task("a")["channel_metadata"] == {}  # no claim, no marker written


def test_github_pagination_stops_at_the_deadline_and_the_redelivery_adopts_the_comment_found_later(
    tables: FanOutTables, github: GitHubStub, fanout: ModuleType
) -> None:
    warm_up(tables, fanout)
    for n in range(250):
        github.add_comment(REPO, PR_NUMBER, f"someone else's comment {n}")
    our_comment = github.add_comment(REPO, PR_NUMBER, "<!-- bgagent-task:a -->\nold state")  # page 3 of 100
    tables.put_task("a", repo=REPO, pr_number=PR_NUMBER, channel_source="api", channel_metadata={})
    tables.put_event("a", "e1", "task_completed")
    event = tables.next_batch()
    github.delay_seconds = 0.8

    first, elapsed = run(fanout, event, timeout_ms=2_900)

    assert elapsed < 2.9
    assert reported(first) == sequence_numbers(event)
    methods = [r.method for r in ours(github.received())]
    assert methods and set(methods) == {"GET"} and len(methods) < 3  # the listing stopped between pages
    assert ours(github.received("POST")) == []  # stopped before creating: no duplicate comment

    github.delay_seconds = 0.0
    second, _ = run(fanout, redelivery(event, first))

    assert reported(second) == []
    assert ours(github.received("POST")) == []
    assert len(github.comments_on(REPO, PR_NUMBER)) == 251
    assert "Completed" in github.comments_on(REPO, PR_NUMBER)[-1]
    assert tables.task("a")["channel_metadata"]["github_comment_id"] == our_comment


# -- email: SES retries and the wait for a live claim ---------------------------------------


@pytest.fixture
def ses(aws: MotoServer, tables: FanOutTables, monkeypatch: pytest.MonkeyPatch) -> Iterator[SesStub]:
    with SesStub() as stub:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", stub.url)
        reset_clients()
        yield stub


def email_event() -> TaskEvent:
    return TaskEvent(task_id="t-1", event_id="e1", event_type="task_completed", timestamp="2026-11-23T14:00:00Z")


def email_task(tables: FanOutTables, **channel_metadata: Any) -> None:
    tables.put_task(
        "t-1",
        channel_source="api",
        channel_metadata=channel_metadata,
        notifications={"email": {"recipients": [RECIPIENT]}},
    )


def test_ses_retries_stop_when_the_next_attempt_would_not_fit_and_the_mail_is_sent_once_later(
    ses: SesStub, tables: FanOutTables
) -> None:
    email_task(tables)
    ses.fail_next(429, "TooManyRequestsException", times=1)
    # 2 s of slack beyond one send's budget (room for the claim writes on a loaded machine); the
    # refusal takes longer than that slack, so no second attempt fits after it.
    ses.delay_seconds = 2.5
    dispatcher = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER)

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        dispatcher.dispatch(email_event(), tables.task("t-1"), Deadline.after(SEND_BUDGET_SECONDS + 2.0))

    assert time.monotonic() - started < 4.5  # no backoff pause that could not be followed by a send
    assert ses.refused == [(429, "TooManyRequestsException")] and ses.sent == []
    assert tables.task("t-1")["channel_metadata"]["email:e1"]["state"] == "released"  # claimable at once

    ses.delay_seconds = 0.0
    dispatcher.dispatch(email_event(), tables.task("t-1"), Deadline.after(60))

    assert [m.subject for m in ses.sent] == ["[bgagent] Task t-1 completed"]


def test_ses_retries_run_while_the_deadline_allows(ses: SesStub, tables: FanOutTables) -> None:
    email_task(tables)
    ses.fail_next(500, "InternalFailure", times=2)
    dispatcher = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER)

    dispatcher.dispatch(email_event(), tables.task("t-1"), Deadline.after(60))

    assert len(ses.refused) == 2 and len(ses.sent) == 1


def test_the_wait_for_a_live_email_claim_ends_in_time_to_leave_a_send(ses: SesStub, tables: FanOutTables) -> None:
    now = int(time.time() * 1000)
    email_task(
        tables,
        **{
            "email:e1": {
                "state": "pending",
                "token": "other",
                "generation": 1,
                "lease_until_ms": now + 30_000,
                "claimed_at_ms": now,
            }
        },
    )
    dispatcher = EmailDispatcher(task_table_name=TASK_TABLE, sender=EMAIL_SENDER, claim_wait_seconds=10)

    started = time.monotonic()
    with pytest.raises(RetryableError, match="still held"):
        dispatcher.dispatch(email_event(), tables.task("t-1"), Deadline.after(SEND_BUDGET_SECONDS + 0.6))

    assert 0.4 <= time.monotonic() - started < 5.0  # waited what the deadline allowed (0.6 s), not the 10 s wait
    assert ses.sent == []


# -- Slack: the wait for a live claim, and the post ------------------------------------------


def live_terminal_marker(slack_world: SlackWorld) -> None:
    now = int(time.time() * 1000)
    slack_world.put_task(
        markers={
            "slack_terminal_msg": {
                "state": "pending",
                "token": "other",
                "generation": 1,
                "lease_until_ms": now + 30_000,
                "claimed_at_ms": now,
                "first_claimed_at_ms": now,
            }
        }
    )


def test_the_wait_for_a_live_slack_claim_ends_in_time_to_leave_a_post(slack_world: SlackWorld) -> None:
    live_terminal_marker(slack_world)
    dispatcher = slack_world.fresh_container(claim_wait_seconds=10)

    started = time.monotonic()
    with pytest.raises(RetryableError, match="another attempt is posting"):
        dispatcher.dispatch(
            make_event("task_completed"), slack_world.task(), Deadline.after(SLACK_POST_BUDGET_SECONDS + 0.6)
        )

    assert 0.4 <= time.monotonic() - started < 5.0  # the deadline allowed 0.6 s, not the 10 s wait
    assert slack_world.stub.calls_to("chat.postMessage") == []


def test_a_slack_post_that_cannot_fit_writes_no_claim_and_a_later_delivery_posts_once(slack_world: SlackWorld) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())
    event = make_event("task_completed")

    with pytest.raises(DeadlineExceededError):
        slack_world.dispatcher.dispatch(event, slack_world.task(), Deadline.after(SLACK_POST_BUDGET_SECONDS - 1))

    assert slack_world.marker("task-1", "slack_terminal_msg") is None
    assert slack_world.stub.calls_to("chat.postMessage") == []

    slack_world.dispatcher.dispatch(event, slack_world.task(), Deadline.after(60))

    assert len(slack_world.stub.calls_to("chat.postMessage")) == 1
    assert slack_world.marker("task-1", "slack_terminal_msg")["state"] == "posted"  # type: ignore[index]
