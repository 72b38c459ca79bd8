"""Channel defaults, per-task overrides, the per-task cap, and the subscription/renderer drift guard."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from handlers.fanout import email, github
from handlers.fanout.model import MalformedRecordError
from handlers.fanout.routing import (
    CHANNEL_DEFAULTS,
    CHANNELS,
    EMAIL,
    EVENT_TYPES,
    GITHUB,
    SLACK,
    TaskEventBudget,
    channels_for,
    email_recipients,
    resolve_subscription,
)

TERMINAL = {"task_completed", "task_failed", "task_cancelled", "task_stranded"}


def test_channel_defaults_are_exactly_the_spec() -> None:
    assert CHANNEL_DEFAULTS[SLACK] == TERMINAL | {"task_timed_out", "task_created", "session_started", "agent_error"}
    assert CHANNEL_DEFAULTS[GITHUB] == TERMINAL | {"pr_created"}
    assert CHANNEL_DEFAULTS[EMAIL] == {"task_completed", "task_failed"}
    assert "approval_required" not in CHANNEL_DEFAULTS[SLACK] | CHANNEL_DEFAULTS[EMAIL]
    assert "status_response" not in CHANNEL_DEFAULTS[SLACK]
    assert all(defaults <= EVENT_TYPES for defaults in CHANNEL_DEFAULTS.values())


@pytest.mark.parametrize("notifications", [None, {}, {"slack": {}}, {"slack": {"enabled": True}}])
def test_no_list_means_defaults(notifications: object) -> None:
    assert resolve_subscription(SLACK, notifications).events == CHANNEL_DEFAULTS[SLACK]


def test_disabled_channel_gets_nothing_even_with_a_list() -> None:
    subscription = resolve_subscription(GITHUB, {"github": {"enabled": False, "events": ["task_failed"]}})

    assert subscription.events == frozenset()
    assert not subscription.muted_by_empty_list


def test_empty_list_mutes_and_is_flagged_for_a_warning() -> None:
    subscription = resolve_subscription(EMAIL, {"email": {"events": []}})

    assert subscription.events == frozenset()
    assert subscription.muted_by_empty_list


def test_default_word_expands_to_the_defaults_plus_the_rest() -> None:
    subscription = resolve_subscription(GITHUB, {"github": {"events": ["default", "agent_error"]}})

    assert subscription.events == CHANNEL_DEFAULTS[GITHUB] | {"agent_error"}


def test_a_list_replaces_the_defaults() -> None:
    subscription = resolve_subscription(SLACK, {"slack": {"events": ["task_failed"]}})

    assert subscription.events == {"task_failed"}


def test_a_string_set_from_dynamodb_is_accepted_as_a_list() -> None:
    assert resolve_subscription(EMAIL, {"email": {"events": {"task_failed"}}}).events == {"task_failed"}


def test_overrides_are_per_channel() -> None:
    notifications = {"slack": {"enabled": False}}

    targets, muted = channels_for("task_completed", notifications, CHANNELS)

    assert targets == [GITHUB, EMAIL]
    assert muted == []


def test_channels_for_only_considers_configured_channels_and_reports_muted_ones() -> None:
    notifications: dict[str, Any] = {"github": {"events": []}}

    targets, muted = channels_for("task_completed", notifications, [GITHUB, EMAIL])

    assert targets == [EMAIL]
    assert muted == [GITHUB]


def test_event_nobody_subscribes_to_has_no_channel() -> None:
    assert channels_for("status_response", None, CHANNELS) == ([], [])
    assert channels_for("agent_milestone", None, CHANNELS) == ([], [])


@pytest.mark.parametrize(
    ("notifications", "message"),
    [
        ("all", "must be a map"),
        ({"slack": ["task_failed"]}, "notifications.slack must be a map"),
        ({"slack": {"enabled": "no"}}, "notifications.slack.enabled must be a boolean"),
        ({"slack": {"events": "task_failed"}}, "notifications.slack.events must be a list of strings"),
        ({"slack": {"events": [1, 2]}}, "notifications.slack.events must be a list of strings"),
    ],
)
def test_malformed_override_is_a_malformed_record(notifications: object, message: str) -> None:
    with pytest.raises(MalformedRecordError, match=message):
        resolve_subscription(SLACK, notifications)


def test_email_recipients() -> None:
    assert email_recipients(None) == []
    assert email_recipients({"email": {"events": ["task_failed"]}}) == []
    assert email_recipients({"email": {"recipients": ["a@x.io", "b@x.io", "a@x.io"]}}) == ["a@x.io", "b@x.io"]
    assert email_recipients({"email": {"recipients": {"b@x.io", "a@x.io"}}}) == ["a@x.io", "b@x.io"]
    with pytest.raises(MalformedRecordError, match="recipients"):
        email_recipients({"email": {"recipients": "a@x.io"}})


def test_budget_admits_the_cap_per_task_then_refuses() -> None:
    budget = TaskEventBudget(cap=20)

    admitted = [budget.admit("t1") for _ in range(25)]

    assert admitted.count(True) == 20 and admitted[20:] == [False] * 5
    assert budget.admit("t2")  # another task has its own cap


def test_budget_counts_exactly_under_concurrent_use() -> None:
    budget = TaskEventBudget(cap=20)
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8, timeout=10)

    def take() -> None:
        start.wait()
        results = [budget.admit("t") for _ in range(10)]
        with lock:
            admitted.extend(results)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert admitted.count(True) == 20


# -- drift: every event a channel subscribes to must have a renderer ------------------------


def _renderable(module: Any) -> frozenset[str]:
    return frozenset(module.RENDERABLE_EVENTS)


def test_every_github_subscription_has_a_renderer() -> None:
    assert CHANNEL_DEFAULTS[GITHUB] <= _renderable(github), CHANNEL_DEFAULTS[GITHUB] - _renderable(github)


def test_every_email_subscription_has_a_renderer() -> None:
    assert CHANNEL_DEFAULTS[EMAIL] <= _renderable(email), CHANNEL_DEFAULTS[EMAIL] - _renderable(email)


def test_every_slack_subscription_has_a_renderer() -> None:
    from handlers.fanout import slack_blocks

    renderable = _renderable(slack_blocks)

    assert CHANNEL_DEFAULTS[SLACK] <= renderable, CHANNEL_DEFAULTS[SLACK] - renderable
