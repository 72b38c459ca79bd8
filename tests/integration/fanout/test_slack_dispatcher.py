"""SlackDispatcher against moto (task table, Secrets Manager) and the local Slack stub.

Assertions are on what the channel shows at the end (the stub's messages after deletes, their
threads and reactions) and on the task row's markers.
"""

from __future__ import annotations

import json
import time

import pytest

from handlers.common.aws import client
from handlers.common.config import ConfigurationError
from handlers.fanout.model import MalformedRecordError, Outcome, RetryableError
from handlers.fanout.slack import (
    CREATED_MARKER,
    MARKERS,
    MAYBE_POSTED_GRACE_MS,
    SESSION_MARKER,
    SLACK_TERMINAL_EVENTS,
    TERMINAL_MARKER,
    TERMINAL_SLACK_ERRORS,
    SlackConfigurationError,
    SlackDispatcher,
    agent_error_marker,
)
from handlers.fanout.slack_blocks import RENDERABLE_EVENTS
from tests.support.moto_server import free_port
from tests.support.slack_fixtures import (  # noqa: F401 (fixtures)
    CHANNEL,
    SECRET_PREFIX,
    TEAM,
    TEAM_JSON,
    TOKEN,
    TOKEN_JSON,
    LogRecords,
    SlackWorld,
    make_event,
    slack_logs_fixture,
    slack_stub_fixture,
    slack_world_fixture,
)
from tests.support.slack_stub import Reply, ok_false, rate_limited, server_error


def test_every_renderable_event_has_a_dedup_marker_and_terminals_share_one() -> None:
    assert set(MARKERS) == RENDERABLE_EVENTS
    assert {MARKERS[event_type] for event_type in SLACK_TERMINAL_EVENTS} == {TERMINAL_MARKER}
    assert len({MARKERS["task_created"], MARKERS["session_started"], MARKERS["agent_error"], TERMINAL_MARKER}) == 4


def test_missing_task_table_name_raises_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="TASK_TABLE_NAME"):
        SlackDispatcher(task_table_name="", slack_secret_prefix=SECRET_PREFIX, slack_api_url=None)


# -- happy paths ----------------------------------------------------------------------------


def test_task_created_replies_in_the_thread_with_unfurl_off_and_marks_eyes(slack_world: SlackWorld) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)

    assert slack_world.deliver(make_event("task_created")) is Outcome.DELIVERED

    [reply] = slack_world.stub.replies(CHANNEL, root)
    assert reply.text == "Task created for octo/widgets"
    assert reply.blocks and reply.blocks[0]["text"]["text"].startswith(":rocket:")
    assert reply.token == TOKEN
    [post] = slack_world.stub.calls_to("chat.postMessage")
    assert post.params["unfurl_links"] is False and post.params["unfurl_media"] is False
    assert slack_world.stub.reactions(CHANNEL, root) == {"eyes"}
    marker = slack_world.marker("task-1", CREATED_MARKER)
    assert marker is not None and marker["state"] == "posted" and marker["ts"] == reply.ts


def test_lifecycle_ends_with_only_the_terminal_reply_and_its_reaction(slack_world: SlackWorld) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root, pr_number=42)

    for event_type in ("task_created", "session_started"):
        assert slack_world.deliver(make_event(event_type)) is Outcome.DELIVERED
    assert [m.text for m in slack_world.stub.replies(CHANNEL, root)] == [
        "Task created for octo/widgets",
        "Agent session started for octo/widgets",
    ]
    assert slack_world.stub.reactions(CHANNEL, root) == {"hourglass_flowing_sand"}

    assert slack_world.deliver(make_event("task_completed")) is Outcome.DELIVERED

    [final] = slack_world.stub.replies(CHANNEL, root)
    assert final.text == "Task completed for octo/widgets"
    buttons = [b for b in final.blocks or [] if b["type"] == "actions"]
    assert buttons[0]["elements"][0]["url"] == "https://github.com/octo/widgets/pull/42"
    assert slack_world.stub.reactions(CHANNEL, root) == {"white_check_mark"}
    assert slack_world.texts() == ["<@UBOT> please fix the flaky test", "Task completed for octo/widgets"]


@pytest.mark.parametrize(
    ("event_type", "text", "reaction"),
    [
        ("task_completed", "Task completed for octo/widgets", "white_check_mark"),
        ("task_failed", "Task failed for octo/widgets", "x"),
        ("task_cancelled", "Task cancelled for octo/widgets", "no_entry_sign"),
        ("task_timed_out", "Task timed out for octo/widgets", "hourglass"),
        ("task_stranded", "Task stranded for octo/widgets (last status: RUNNING)", "x"),
    ],
)
def test_terminal_events_post_their_message_and_reaction(
    slack_world: SlackWorld, event_type: str, text: str, reaction: str
) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)

    outcome = slack_world.deliver(make_event(event_type, metadata={"prior_status": "RUNNING"}))

    assert outcome is Outcome.DELIVERED
    assert [m.text for m in slack_world.stub.replies(CHANNEL, root)] == [text]
    assert slack_world.stub.reactions(CHANNEL, root) == {reaction}
    marker = slack_world.marker("task-1", TERMINAL_MARKER)
    assert marker is not None and marker["event_type"] == event_type


def test_agent_error_posts_type_and_preview_without_touching_reactions(slack_world: SlackWorld) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)
    slack_world.deliver(make_event("task_created"))

    event = make_event("agent_error", metadata={"error_type": "ToolTimeout", "message_preview": "pytest hung"})
    outcome = slack_world.deliver(event)

    assert outcome is Outcome.DELIVERED
    agent_error = slack_world.stub.replies(CHANNEL, root)[-1]
    assert agent_error.text == "Agent error on octo/widgets: ToolTimeout"
    assert any(b["text"]["text"] == "pytest hung" for b in agent_error.blocks or [] if b["type"] == "section")
    assert slack_world.stub.reactions(CHANNEL, root) == {"eyes"}
    assert slack_world.marker("task-1", agent_error_marker(event.event_id)) is not None


def test_json_secret_with_bot_token_is_used_for_its_team(slack_world: SlackWorld) -> None:
    root = slack_world.mention()
    slack_world.put_task(team_id=TEAM_JSON, thread_ts=root)

    slack_world.deliver(make_event("task_created"))

    assert {call.token for call in slack_world.stub.calls} == {TOKEN_JSON}


def test_json_secret_with_token_is_used_for_its_team_like_github_secrets(slack_world: SlackWorld) -> None:
    client("secretsmanager").create_secret(
        Name=f"{SECRET_PREFIX}T0TOKEN", SecretString=json.dumps({"token": "xoxb-token-key"})
    )
    slack_world.put_task(team_id="T0TOKEN", thread_ts=slack_world.mention())

    assert slack_world.deliver(make_event("task_created")) is Outcome.DELIVERED

    assert {call.token for call in slack_world.stub.calls} == {"xoxb-token-key"}


def test_dm_channel_posts_to_the_user_id_and_lands_in_the_dm_thread(slack_world: SlackWorld) -> None:
    slack_world.stub.open_dm("U0ALICE", "D0ALICE")
    root = slack_world.mention(channel="D0ALICE")
    slack_world.put_task(channel_id="D0ALICE", user_id="U0ALICE", thread_ts=root)

    slack_world.deliver(make_event("task_created"))
    slack_world.deliver(make_event("task_completed"))

    assert [call.channel for call in slack_world.stub.calls_to("chat.postMessage")] == ["U0ALICE", "U0ALICE"]
    assert [m.text for m in slack_world.stub.replies("D0ALICE", root)] == ["Task completed for octo/widgets"]
    assert slack_world.stub.reactions("D0ALICE", root) == {"white_check_mark"}


def test_dm_channel_without_a_user_id_posts_to_the_channel(slack_world: SlackWorld) -> None:
    root = slack_world.mention(channel="D0BOB")
    slack_world.put_task(channel_id="D0BOB", thread_ts=root)

    slack_world.deliver(make_event("task_created"))

    assert [call.channel for call in slack_world.stub.calls_to("chat.postMessage")] == ["D0BOB"]
    assert len(slack_world.stub.replies("D0BOB", root)) == 1


def test_without_a_thread_the_created_message_becomes_the_root(slack_world: SlackWorld) -> None:
    slack_world.put_task()

    for event_type in ("task_created", "session_started", "task_failed"):
        assert slack_world.deliver(make_event(event_type)) is Outcome.DELIVERED

    [root] = [m for m in slack_world.stub.messages(CHANNEL) if m.thread_ts is None]
    assert root.text == "Task created for octo/widgets"  # kept: it holds the thread
    assert [m.text for m in slack_world.stub.replies(CHANNEL, root.ts)] == ["Task failed for octo/widgets"]
    assert slack_world.stub.reactions(CHANNEL, root.ts) == {"x"}


def test_without_a_thread_a_read_older_than_the_created_message_still_threads_under_it(
    slack_world: SlackWorld,
) -> None:
    slack_world.put_task()
    read_before_created = slack_world.task()  # e.g. an overlapping invocation confirmed it meanwhile
    assert slack_world.deliver(make_event("task_created")) is Outcome.DELIVERED

    # the claim itself returns the row, which shows the created message: no top-level post
    assert slack_world.dispatcher.dispatch(make_event("session_started"), read_before_created) is Outcome.DELIVERED

    [root] = [m for m in slack_world.stub.messages(CHANNEL) if m.thread_ts is None]
    assert root.text == "Task created for octo/widgets"
    assert [m.text for m in slack_world.stub.replies(CHANNEL, root.ts)] == ["Agent session started for octo/widgets"]
    assert slack_world.stub.reactions(CHANNEL, root.ts) == {"hourglass_flowing_sand"}


def test_a_duplicate_is_answered_from_the_row_without_the_bot_token(slack_world: SlackWorld) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())
    event = make_event("task_created")
    assert slack_world.deliver(event) is Outcome.DELIVERED
    client("secretsmanager").delete_secret(SecretId=f"{SECRET_PREFIX}{TEAM}", ForceDeleteWithoutRecovery=True)

    # a redelivery during a secret outage: the posted marker settles it, nothing to fail on
    assert slack_world.fresh_container().dispatch(event, slack_world.task()) is Outcome.SKIPPED

    assert len(slack_world.stub.calls_to("chat.postMessage")) == 1
    assert len(slack_world.stub.messages(CHANNEL)) == 2  # the @mention and our one reply


# -- what is not for Slack ------------------------------------------------------------------


def test_non_slack_task_is_skipped_without_any_slack_call(slack_world: SlackWorld) -> None:
    slack_world.put_task(channel_source="api")

    assert slack_world.deliver(make_event("task_completed")) is Outcome.SKIPPED
    assert slack_world.stub.calls == []


def test_event_without_renderer_is_skipped(slack_world: SlackWorld) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())

    assert slack_world.deliver(make_event("pr_created")) is Outcome.SKIPPED
    assert slack_world.stub.calls_to("chat.postMessage") == []


def test_slack_task_without_channel_is_a_malformed_record(slack_world: SlackWorld) -> None:
    task = slack_world.put_task()
    del task["channel_metadata"]["slack_channel_id"]

    with pytest.raises(MalformedRecordError, match="slack_channel_id"):
        slack_world.dispatcher.dispatch(make_event("task_created"), task)
    assert slack_world.stub.calls == []


# -- error classes ----------------------------------------------------------------------------


def test_every_terminal_slack_error_is_swallowed_as_terminal_failure(
    slack_world: SlackWorld, slack_logs: LogRecords
) -> None:
    # One world, one task per code (a moto reset per code would triple the runtime).
    for code in sorted(TERMINAL_SLACK_ERRORS):
        root = slack_world.mention()
        slack_world.put_task(code, thread_ts=root)
        slack_world.stub.script("chat.postMessage", ok_false(code))

        outcome = slack_world.deliver(make_event("task_failed", task_id=code))

        assert outcome is Outcome.TERMINAL_FAILURE, code
        assert slack_world.stub.replies(CHANNEL, root) == [], code
        marker = slack_world.marker(code, TERMINAL_MARKER)
        assert marker is not None and marker["state"] == "released", code  # a later terminal may post
    logged = slack_logs.values("slack_error")
    assert logged == sorted(TERMINAL_SLACK_ERRORS)


def test_auth_error_drops_the_cached_token_so_a_rotated_secret_is_picked_up(slack_world: SlackWorld) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)
    slack_world.deliver(make_event("task_created"))  # caches TOKEN
    slack_world.stub.script("chat.postMessage", ok_false("token_revoked"))
    assert slack_world.deliver(make_event("session_started")) is Outcome.TERMINAL_FAILURE

    client("secretsmanager").put_secret_value(SecretId=f"{SECRET_PREFIX}{TEAM}", SecretString="xoxb-rotated")
    assert slack_world.deliver(make_event("task_completed")) is Outcome.DELIVERED

    assert slack_world.stub.calls_to("chat.postMessage")[-1].token == "xoxb-rotated"


@pytest.mark.parametrize(
    "reply",
    [
        rate_limited(retry_after=7),
        ok_false("ratelimited"),
        ok_false("internal_error"),
        ok_false("fatal_error"),
        ok_false("service_unavailable"),
        ok_false("request_timeout"),
        server_error(500),
        server_error(503),
    ],
    ids=lambda r: f"{r.status}-{r.error}",
)
def test_transient_slack_errors_are_retryable_and_post_nothing(
    slack_world: SlackWorld, slack_logs: LogRecords, reply: Reply
) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)
    slack_world.stub.script("chat.postMessage", reply)

    with pytest.raises(RetryableError) as raised:
        slack_world.deliver(make_event("task_completed"))

    assert slack_world.stub.replies(CHANNEL, root) == []
    marker = slack_world.marker("task-1", TERMINAL_MARKER)
    # released (definitely not posted) or lease cut to the grace (Slack may have stored it)
    assert marker is not None
    assert marker["state"] == "released" or marker["lease_until_ms"] <= time.time() * 1000 + MAYBE_POSTED_GRACE_MS
    assert raised.value.retry_after_seconds == reply.retry_after
    assert slack_logs.values("retry_after_seconds") == [reply.retry_after]


def test_rate_limit_is_not_retried_inside_the_invocation(slack_world: SlackWorld) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())
    slack_world.stub.script("chat.postMessage", rate_limited(retry_after=30))

    with pytest.raises(RetryableError):
        slack_world.deliver(make_event("task_created"))

    assert len(slack_world.stub.calls_to("chat.postMessage")) == 1  # Lambda's redelivery is the retry


def test_unreachable_slack_is_retryable(slack_world: SlackWorld) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())
    dispatcher = slack_world.fresh_container(slack_api_url=f"http://127.0.0.1:{free_port()}/api/")

    with pytest.raises(RetryableError):
        dispatcher.dispatch(make_event("task_created"), slack_world.task())

    # The request may have reached Slack before the connection broke: the lease is cut to a
    # short grace so the redelivery takes over within seconds and looks before posting again.
    marker = slack_world.marker("task-1", CREATED_MARKER)
    assert marker is not None and marker["state"] == "pending"
    assert marker["lease_until_ms"] <= time.time() * 1000 + MAYBE_POSTED_GRACE_MS


# -- bot-token secret --------------------------------------------------------------------------


def test_missing_secret_fails_the_record_with_an_error_id(slack_world: SlackWorld, slack_logs: LogRecords) -> None:
    slack_world.put_task(team_id="T0UNKNOWN", thread_ts=slack_world.mention())

    with pytest.raises(SlackConfigurationError, match="FANOUT_SLACK_SECRET_MISSING"):
        slack_world.deliver(make_event("task_created"))

    assert "FANOUT_SLACK_SECRET_MISSING" in slack_logs.error_ids()
    assert slack_world.stub.calls == []
    assert slack_world.marker("task-1", CREATED_MARKER) is None  # no claim left behind


def test_secret_created_after_a_failure_heals_the_redelivery(slack_world: SlackWorld) -> None:
    slack_world.put_task(team_id="T0LATE", thread_ts=slack_world.mention())
    with pytest.raises(SlackConfigurationError):
        slack_world.deliver(make_event("task_created", event_id="e1"))

    client("secretsmanager").create_secret(Name=f"{SECRET_PREFIX}T0LATE", SecretString="xoxb-late")

    assert slack_world.deliver(make_event("task_created", event_id="e1")) is Outcome.DELIVERED


@pytest.mark.parametrize(
    "secret",
    [
        {"SecretString": json.dumps({"access_token": "xoxb-wrong-field"})},
        {"SecretString": json.dumps({"bot_token": 12345})},
        {"SecretString": "{not json"},
        {"SecretString": "   "},
        {"SecretString": "hunter2"},
        {"SecretBinary": b"xoxb-binary"},
    ],
    ids=["wrong-field", "non-string", "broken-json", "blank", "not-a-token", "binary"],
)
def test_malformed_secret_fails_the_record_with_an_error_id(
    slack_world: SlackWorld, slack_logs: LogRecords, secret: dict[str, object]
) -> None:
    client("secretsmanager").create_secret(Name=f"{SECRET_PREFIX}T0BAD", **secret)
    slack_world.put_task(team_id="T0BAD", thread_ts=slack_world.mention())

    with pytest.raises(SlackConfigurationError, match="FANOUT_SLACK_SECRET_MALFORMED"):
        slack_world.deliver(make_event("task_created"))

    assert slack_logs.error_ids() == ["FANOUT_SLACK_SECRET_MALFORMED"]
    assert slack_world.stub.calls == []


# -- markers ----------------------------------------------------------------------------------


def test_each_kind_of_message_has_its_own_marker(slack_world: SlackWorld) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())

    events = [
        make_event(event_type) for event_type in ("task_created", "session_started", "agent_error", "task_cancelled")
    ]
    for event in events:
        slack_world.deliver(event)

    channel_metadata = slack_world.task()["channel_metadata"]
    for marker in (CREATED_MARKER, SESSION_MARKER, agent_error_marker(events[2].event_id), TERMINAL_MARKER):
        assert channel_metadata[marker]["state"] == "posted"
    assert channel_metadata[TERMINAL_MARKER]["event_type"] == "task_cancelled"


@pytest.mark.parametrize(
    "code",
    [
        "thread_not_found",
        "cannot_reply_to_message",
        "not_allowed_token_type",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "metadata_must_be_sent_from_app",
    ],
)
def test_permanent_slack_errors_are_terminal_not_retried_until_the_dlq(slack_world: SlackWorld, code: str) -> None:
    root = slack_world.mention()
    slack_world.put_task(thread_ts=root)
    slack_world.stub.script("chat.postMessage", ok_false(code))

    assert slack_world.deliver(make_event("task_failed")) is Outcome.TERMINAL_FAILURE

    assert slack_world.stub.replies(CHANNEL, root) == []
    marker = slack_world.marker("task-1", TERMINAL_MARKER)
    assert marker is not None and marker["state"] == "released"


def test_terminal_cleanup_skips_the_reread_when_the_record_start_read_shows_both_messages_posted(
    slack_world: SlackWorld,
) -> None:
    slack_world.put_task(thread_ts=slack_world.mention())
    slack_world.deliver(make_event("task_created"))
    slack_world.deliver(make_event("session_started"))
    task = slack_world.task()  # the record-start read: both intermediate messages posted (final)
    calls: list[str] = []

    def count(event_name: str, **_: object) -> None:
        calls.append(event_name.rsplit(".", 1)[-1])

    ddb = client("dynamodb")
    ddb.meta.events.register("before-call.dynamodb", count)
    try:
        assert slack_world.dispatcher.dispatch(make_event("task_completed"), task) is Outcome.DELIVERED
    finally:
        ddb.meta.events.unregister("before-call.dynamodb", count)

    assert calls == ["UpdateItem", "UpdateItem"]  # claim and confirm; no re-read
    texts = slack_world.texts()
    assert texts[1:] == ["Task completed for octo/widgets"]  # created and session messages deleted
