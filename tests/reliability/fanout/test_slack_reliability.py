"""Slack dispatcher under duplicate delivery, redelivery after failures, crashes and races.

Every test ends by asserting what the Slack channel shows (messages present after deletes)
-- the user-visible truth -- not how many calls were made.

Crashes are not simulated by breaking our own code at some point: the tests arrange the state
a crashed attempt leaves behind (a pending claim with its lease, with or without the message
it had posted) and deliver the record again, as Lambda would, to a fresh container.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from handlers.fanout import slack
from handlers.fanout.model import Outcome, RetryableError
from handlers.fanout.slack import CREATED_MARKER, SESSION_MARKER, TERMINAL_MARKER
from tests.support.slack_fixtures import (  # noqa: F401 (fixtures)
    CHANNEL,
    LogRecords,
    SlackWorld,
    make_event,
    slack_logs_fixture,
    slack_stub_fixture,
    slack_world_fixture,
)
from tests.support.slack_stub import Call, Reply, ok_false, rate_limited, server_error

COMPLETED = "Task completed for octo/widgets"
CREATED = "Task created for octo/widgets"


def now_ms() -> int:
    return int(time.time() * 1000)


def pending_claim(*, lease_until_ms: int, event_type: str = "task_completed") -> dict[str, Any]:
    """A marker exactly as an attempt writes it when it claims (and then crashes)."""
    return {
        "state": "pending",
        "token": "token-of-the-crashed-attempt",
        "lease_until_ms": lease_until_ms,
        "first_claimed_at_ms": now_ms() - 5_000,
        "event_id": "evt-crashed",
        "event_type": event_type,
    }


@pytest.fixture
def thread(slack_world: SlackWorld) -> str:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)
    return root


def replies(world: SlackWorld, root: str) -> list[str | None]:
    return [message.text for message in world.stub.replies(CHANNEL, root)]


# -- duplicate delivery ---------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["task_created", "session_started", "agent_error", "task_failed"])
def test_the_same_event_delivered_twice_posts_once(slack_world: SlackWorld, thread: str, event_type: str) -> None:
    event = make_event(event_type, metadata={"error_type": "Boom"})

    assert slack_world.deliver(event) is Outcome.DELIVERED
    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.SKIPPED

    assert len(replies(slack_world, thread)) == 1


def test_a_second_terminal_event_is_deduplicated_against_the_first(slack_world: SlackWorld, thread: str) -> None:
    assert slack_world.deliver(make_event("task_failed")) is Outcome.DELIVERED
    # the reconciler emits stranded after (or besides) failed: operators must not be paged twice
    assert slack_world.deliver(make_event("task_stranded", metadata={"prior_status": "RUNNING"})) is Outcome.SKIPPED
    assert slack_world.deliver(make_event("task_completed")) is Outcome.SKIPPED

    assert replies(slack_world, thread) == ["Task failed for octo/widgets"]
    assert slack_world.stub.reactions(CHANNEL, thread) == {"x"}


def test_a_redelivery_whose_read_predates_the_confirm_is_deduplicated_by_the_claim(
    slack_world: SlackWorld, thread: str
) -> None:
    event = make_event("task_completed")
    read_before_confirm = slack_world.task()  # the redelivery read the row while the first attempt posted
    assert slack_world.deliver(event) is Outcome.DELIVERED

    assert slack_world.fresh_container().dispatch(event, read_before_confirm) is Outcome.SKIPPED

    assert replies(slack_world, thread) == [COMPLETED]
    assert slack_world.stub.reactions(CHANNEL, thread) == {"white_check_mark"}


def test_agent_error_and_terminal_events_use_distinct_markers(slack_world: SlackWorld, thread: str) -> None:
    agent_error = make_event("agent_error", metadata={"error_type": "OOM"})

    slack_world.deliver(agent_error)
    slack_world.deliver(make_event("task_completed"))
    assert slack_world.deliver(agent_error) is Outcome.SKIPPED  # redelivered after a sibling channel failed

    assert replies(slack_world, thread) == ["Agent error on octo/widgets: OOM", COMPLETED]


def test_concurrent_deliveries_of_one_event_post_once(slack_world: SlackWorld, thread: str) -> None:
    event = make_event("task_completed")
    slack_world.stub.script("chat.postMessage", Reply(delay=0.3))  # the first post is slow
    results: list[Outcome] = []

    def deliver() -> None:
        results.append(slack_world.fresh_container().dispatch(event, slack_world.task()))

    workers = [threading.Thread(target=deliver) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    # one posts; the other finds its claim, waits for it and sees it confirmed
    assert sorted(outcome.value for outcome in results) == ["delivered", "skipped"]
    assert replies(slack_world, thread) == [COMPLETED]


def test_many_tasks_in_parallel_each_get_exactly_their_message(slack_world: SlackWorld) -> None:
    roots = {f"task-{n}": slack_world.mention() for n in range(8)}
    for task_id, root in roots.items():
        slack_world.put_task(task_id, thread_ts=root)
    dispatcher = slack_world.fresh_container()
    workers = [
        threading.Thread(
            target=dispatcher.dispatch, args=(make_event("task_created", task_id), slack_world.task(task_id))
        )
        for task_id in roots
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    for root in roots.values():
        assert replies(slack_world, root) == [CREATED]


# -- redelivery after a failed post (the seed's bug: marker written before the post) ---------


@pytest.mark.parametrize(
    "failure",
    [rate_limited(retry_after=3), ok_false("internal_error"), server_error(502), server_error(503, deliver=True)],
    ids=["429", "internal_error", "502-not-stored", "503-but-stored"],
)
def test_a_retryable_post_failure_is_neither_lost_nor_duplicated_on_redelivery(
    slack_world: SlackWorld, thread: str, failure: Reply
) -> None:
    event = make_event("task_completed")
    slack_world.stub.script("chat.postMessage", failure)
    with pytest.raises(RetryableError):
        slack_world.deliver(event)

    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [COMPLETED]
    assert slack_world.stub.reactions(CHANNEL, thread) == {"white_check_mark"}
    assert slack_world.deliver(event) is Outcome.SKIPPED


def test_a_post_that_timed_out_but_was_stored_is_adopted_not_reposted(slack_world: SlackWorld, thread: str) -> None:
    event = make_event("task_completed")
    slow = slack_world.fresh_container(http_timeout_seconds=1)
    slack_world.stub.script("chat.postMessage", Reply(delay=1.5))  # Slack stores it, our client gives up first
    with pytest.raises(RetryableError):
        slow.dispatch(event, slack_world.task())
    # the redelivery waits out the short grace, takes over and finds the stored message

    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [COMPLETED]
    assert len(slack_world.stub.calls_to("chat.postMessage")) == 1


# -- crash windows (state arranged as a crashed attempt leaves it) --------------------------


def test_crash_before_the_claim_delivers_once(slack_world: SlackWorld, thread: str) -> None:
    assert slack_world.fresh_container().dispatch(make_event("task_completed"), slack_world.task()) is Outcome.DELIVERED
    assert replies(slack_world, thread) == [COMPLETED]


def test_a_claim_in_flight_beyond_the_claim_wait_fails_retryably(slack_world: SlackWorld, thread: str) -> None:
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=now_ms() + 30_000))

    with pytest.raises(RetryableError) as raised:  # the lease outlasts what this attempt may wait
        slack_world.fresh_container(claim_wait_seconds=0.3).dispatch(make_event("task_completed"), slack_world.task())

    assert 0 < (raised.value.retry_after_seconds or 0) <= 30
    assert replies(slack_world, thread) == []
    marker = slack_world.marker("task-1", TERMINAL_MARKER)
    assert marker is not None and marker["token"] == "token-of-the-crashed-attempt"  # untouched


def test_crash_after_the_claim_before_the_post_reposts_once_the_lease_ends(
    slack_world: SlackWorld, thread: str
) -> None:
    # the crashed attempt's lease has a second to run: the redelivery waits it out and takes over
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=now_ms() + 1_000))

    assert slack_world.fresh_container().dispatch(make_event("task_completed"), slack_world.task()) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [COMPLETED]
    marker = slack_world.marker("task-1", TERMINAL_MARKER)
    assert marker is not None and marker["state"] == "posted" and marker["token"] != "token-of-the-crashed-attempt"


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "top-level"])
def test_crash_after_the_post_before_the_confirm_adopts_the_earlier_message(
    slack_world: SlackWorld, threaded: bool
) -> None:
    root = slack_world.mention() if threaded else None
    slack_world.put_task(thread_ts=root)
    event = make_event("task_created")
    # The crashed attempt: it claimed and posted (for real, through the dispatcher) ...
    assert slack_world.deliver(event) is Outcome.DELIVERED
    [earlier] = [m for m in slack_world.stub.messages(CHANNEL) if m.text == CREATED]
    # ... but its confirm never happened: the row still holds its pending claim, lease expired.
    slack_world.set_marker(
        "task-1", CREATED_MARKER, pending_claim(lease_until_ms=now_ms() - 1, event_type="task_created")
    )

    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.DELIVERED

    assert [m.ts for m in slack_world.stub.messages(CHANNEL) if m.text == CREATED] == [earlier.ts]
    assert len(slack_world.stub.calls_to("chat.postMessage")) == 1
    marker = slack_world.marker("task-1", CREATED_MARKER)
    assert marker is not None and marker["state"] == "posted" and marker["ts"] == earlier.ts


def test_crash_after_the_post_of_one_terminal_is_adopted_by_the_next_terminal(
    slack_world: SlackWorld, thread: str
) -> None:
    assert slack_world.deliver(make_event("task_failed")) is Outcome.DELIVERED
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=0, event_type="task_failed"))

    stranded = make_event("task_stranded", metadata={"prior_status": "RUNNING"})
    assert slack_world.fresh_container().dispatch(stranded, slack_world.task()) is Outcome.DELIVERED

    assert replies(slack_world, thread) == ["Task failed for octo/widgets"]


def test_crash_after_the_confirm_skips(slack_world: SlackWorld, thread: str) -> None:
    event = make_event("task_completed")
    slack_world.deliver(event)

    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.SKIPPED
    assert replies(slack_world, thread) == [COMPLETED]


def test_when_the_lookup_is_impossible_the_takeover_reposts_and_says_so(
    slack_world: SlackWorld, thread: str, slack_logs
) -> None:
    # The documented residual window: without history scope we cannot see the earlier message.
    event = make_event("task_completed")
    slack_world.deliver(event)
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=0))
    slack_world.stub.script("conversations.replies", ok_false("missing_scope"))

    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [COMPLETED, COMPLETED]  # a duplicate, never a loss
    assert "FANOUT_SLACK_LOOKUP_UNAVAILABLE" in slack_logs.error_ids()


def test_a_transient_lookup_failure_is_retried_before_anything_is_posted(slack_world: SlackWorld, thread: str) -> None:
    event = make_event("task_completed")
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=0))
    slack_world.stub.script("conversations.replies", rate_limited(retry_after=2))

    with pytest.raises(RetryableError):
        slack_world.deliver(event)
    assert replies(slack_world, thread) == []

    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.DELIVERED
    assert replies(slack_world, thread) == [COMPLETED]


# -- conditional-write race on created/session: the loser deletes its duplicate ---------------


def competitor_confirms_first(world: SlackWorld, root: str, marker: str, text: str) -> Callable[[Call], None]:
    """While our post is in flight, another attempt posts the same message and confirms it."""

    def act(call: Call) -> None:
        ts = world.stub.add_message(CHANNEL, text, thread_ts=root)
        world.set_marker(
            "task-1", marker, {"state": "posted", "token": "competitor", "ts": ts, "channel": CHANNEL, "event_type": ""}
        )

    return act


@pytest.mark.parametrize(
    ("event_type", "marker", "text"),
    [
        ("task_created", CREATED_MARKER, CREATED),
        ("session_started", SESSION_MARKER, "Agent session started for octo/widgets"),
    ],
)
def test_losing_the_conditional_write_deletes_the_duplicate(
    slack_world: SlackWorld, thread: str, slack_logs: LogRecords, event_type: str, marker: str, text: str
) -> None:
    slack_world.stub.script(
        "chat.postMessage", Reply(before=competitor_confirms_first(slack_world, thread, marker, text))
    )

    assert slack_world.deliver(make_event(event_type)) is Outcome.SKIPPED

    [survivor] = slack_world.stub.replies(CHANNEL, thread)
    stored = slack_world.marker("task-1", marker)
    assert stored is not None and survivor.ts == stored["ts"] and survivor.text == text
    assert slack_logs.error_ids() == []


def test_a_duplicate_already_gone_counts_as_deleted(
    slack_world: SlackWorld, thread: str, slack_logs: LogRecords
) -> None:
    slack_world.stub.script(
        "chat.postMessage", Reply(before=competitor_confirms_first(slack_world, thread, CREATED_MARKER, CREATED))
    )
    # someone removed our duplicate before we did: chat.delete answers message_not_found
    slack_world.stub.script(
        "chat.delete", Reply(before=lambda call: slack_world.stub.remove_message(call.channel or "", call.params["ts"]))
    )

    assert slack_world.deliver(make_event("task_created")) is Outcome.SKIPPED

    assert [call.error for call in slack_world.stub.calls_to("chat.delete")] == ["message_not_found"]
    assert len(slack_world.stub.replies(CHANNEL, thread)) == 1
    assert "FANOUT_SLACK_DUP_DELETE_FAILED" not in slack_logs.error_ids()


def test_a_failed_duplicate_delete_is_logged_with_its_error_id(
    slack_world: SlackWorld, thread: str, slack_logs
) -> None:
    slack_world.stub.script(
        "chat.postMessage", Reply(before=competitor_confirms_first(slack_world, thread, CREATED_MARKER, CREATED))
    )
    slack_world.stub.script("chat.delete", ok_false("internal_error"))

    assert slack_world.deliver(make_event("task_created")) is Outcome.SKIPPED

    assert slack_logs.error_ids() == ["FANOUT_SLACK_DUP_DELETE_FAILED"]
    assert "slack_duplicate_delete_failed" in slack.metrics.metric_set
    assert len(slack_world.stub.replies(CHANNEL, thread)) == 2  # honest: the duplicate stays visible


# -- terminal cleanup reads the row again -----------------------------------------------------


def test_terminal_cleanup_uses_the_reread_row_not_the_stale_snapshot(slack_world: SlackWorld, thread: str) -> None:
    slack_world.deliver(make_event("task_created"))
    stale = slack_world.task()  # read before session_started's ts was stored
    slack_world.deliver(make_event("session_started"))
    assert SESSION_MARKER not in stale["channel_metadata"]

    assert slack_world.dispatcher.dispatch(make_event("task_completed"), stale) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [COMPLETED]


# -- reactions are best effort ----------------------------------------------------------------


def test_a_failing_reaction_does_not_fail_the_record(
    slack_world: SlackWorld, thread: str, slack_logs: LogRecords
) -> None:
    slack_world.stub.script("reactions.add", ok_false("internal_error"))

    assert slack_world.deliver(make_event("task_created")) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [CREATED]
    assert slack_world.stub.reactions(CHANNEL, thread) == set()
    assert slack_logs.error_ids() == ["FANOUT_SLACK_REACTION_FAILED"]


def test_losing_the_terminal_race_removes_our_message_and_our_reaction(slack_world: SlackWorld, thread: str) -> None:
    def completed_elsewhere(call: Call) -> None:
        ts = slack_world.stub.add_message(CHANNEL, COMPLETED, thread_ts=thread)
        slack_world.set_marker(
            "task-1",
            TERMINAL_MARKER,
            {"state": "posted", "token": "competitor", "ts": ts, "channel": CHANNEL, "event_type": "task_completed"},
        )

    slack_world.stub.script("chat.postMessage", Reply(before=completed_elsewhere))

    assert slack_world.deliver(make_event("task_failed")) is Outcome.SKIPPED

    assert replies(slack_world, thread) == [COMPLETED]
    assert "x" not in slack_world.stub.reactions(CHANNEL, thread)


def test_a_claim_taken_over_while_posting_keeps_the_message_and_alarms(
    slack_world: SlackWorld, thread: str, slack_logs
) -> None:
    # Our attempt stalled past its lease: another attempt took the claim over (and is pending).
    def taken_over(call: Call) -> None:
        slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=now_ms() + 30_000))

    slack_world.stub.script("chat.postMessage", Reply(before=taken_over))

    assert slack_world.deliver(make_event("task_completed")) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [COMPLETED]  # kept: the taker can adopt it by its metadata
    assert slack_logs.error_ids() == ["FANOUT_SLACK_LEASE_OVERRUN"]


def test_cleanup_sees_a_session_message_confirmed_while_the_terminal_was_posting(
    slack_world: SlackWorld, thread: str
) -> None:
    slack_world.deliver(make_event("task_created"))
    session_post: list[str] = []

    def session_confirmed_meanwhile(call: Call) -> None:
        ts = slack_world.stub.add_message(CHANNEL, "Agent session started for octo/widgets", thread_ts=thread)
        session_post.append(ts)
        slack_world.set_marker(
            "task-1", SESSION_MARKER, {"state": "posted", "token": "t", "ts": ts, "channel": CHANNEL}
        )

    slack_world.stub.script("chat.postMessage", Reply(before=session_confirmed_meanwhile))

    assert slack_world.deliver(make_event("task_completed")) is Outcome.DELIVERED

    assert session_post and replies(slack_world, thread) == [COMPLETED]


# -- agent errors: one message per error event, each deduplicated ---------------------------


def test_a_second_different_agent_error_posts_and_each_redelivery_is_deduplicated(
    slack_world: SlackWorld, thread: str
) -> None:
    first = make_event("agent_error", metadata={"error_type": "OOM"})
    second = make_event("agent_error", metadata={"error_type": "Timeout"})

    assert slack_world.deliver(first) is Outcome.DELIVERED
    assert slack_world.deliver(second) is Outcome.DELIVERED
    # redeliveries of both (a sibling channel failed), also to a fresh container
    assert slack_world.deliver(first) is Outcome.SKIPPED
    assert slack_world.fresh_container().dispatch(second, slack_world.task()) is Outcome.SKIPPED

    assert replies(slack_world, thread) == ["Agent error on octo/widgets: OOM", "Agent error on octo/widgets: Timeout"]


def test_terminal_cleanup_keeps_working_after_several_agent_errors(slack_world: SlackWorld, thread: str) -> None:
    for event in (
        make_event("task_created"),
        make_event("session_started"),
        make_event("agent_error", metadata={"error_type": "OOM"}),
        make_event("agent_error", metadata={"error_type": "Timeout"}),
        make_event("task_completed"),
    ):
        assert slack_world.deliver(event) is Outcome.DELIVERED

    # the intermediate created/session messages are gone; agent errors and the terminal stay
    assert replies(slack_world, thread) == [
        "Agent error on octo/widgets: OOM",
        "Agent error on octo/widgets: Timeout",
        COMPLETED,
    ]
    assert slack_world.stub.reactions(CHANNEL, thread) == {"white_check_mark"}


# -- adopting another terminal's message: its reaction, not ours -----------------------------


def test_adopting_another_terminals_message_sets_the_reaction_of_the_message_owner(
    slack_world: SlackWorld, thread: str
) -> None:
    # The crashed attempt posted "timed out" (and its reaction), then died before confirming.
    assert slack_world.deliver(make_event("task_timed_out")) is Outcome.DELIVERED
    [timed_out] = replies(slack_world, thread)
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=0, event_type="task_timed_out"))

    # task_failed takes the terminal marker over and adopts that message
    assert slack_world.fresh_container().dispatch(make_event("task_failed"), slack_world.task()) is Outcome.DELIVERED

    assert replies(slack_world, thread) == [timed_out]
    assert slack_world.stub.reactions(CHANNEL, thread) == {"hourglass"}  # the message says timed out
    marker = slack_world.marker("task-1", TERMINAL_MARKER)
    assert marker is not None and marker["state"] == "posted" and marker["event_type"] == "task_timed_out"


def test_adopting_reads_the_owner_from_the_message_even_after_a_chain_of_takeovers(
    slack_world: SlackWorld, thread: str
) -> None:
    assert slack_world.deliver(make_event("task_timed_out")) is Outcome.DELIVERED
    # a task_failed attempt took over and crashed before adopting; the marker now names it
    slack_world.set_marker("task-1", TERMINAL_MARKER, pending_claim(lease_until_ms=0, event_type="task_failed"))

    stranded = make_event("task_stranded", metadata={"prior_status": "RUNNING"})
    assert slack_world.fresh_container().dispatch(stranded, slack_world.task()) is Outcome.DELIVERED

    assert len(replies(slack_world, thread)) == 1
    assert slack_world.stub.reactions(CHANNEL, thread) == {"hourglass"}
