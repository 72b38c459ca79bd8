"""GitHub comment and email rendering, and the small pure helpers of those dispatchers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from handlers.fanout import email, github
from handlers.fanout.model import MalformedRecordError, TaskEvent

TASK = {"task_id": "t-1", "repo": "octo/widgets", "pr_number": Decimal(7)}


def event(event_type: str, **metadata: Any) -> TaskEvent:
    return TaskEvent("t-1", "e-9", event_type, "2026-11-23T10:00:00Z", metadata)


@pytest.mark.parametrize("event_type", sorted(github.RENDERABLE_EVENTS))
def test_every_github_comment_carries_the_marker_and_the_event(event_type: str) -> None:
    body = github.render_comment(event(event_type), TASK)

    assert body.startswith("<!-- bgagent-task:t-1 -->\n")
    assert "`e-9`" in body and event_type in body
    assert "None" not in body  # absent metadata leaves no trace


def test_github_comment_details() -> None:
    completed = github.render_comment(event("task_completed", pr_url="https://github.com/octo/widgets/pull/7"), TASK)
    failed = github.render_comment(event("task_failed", error_message="x" * 900), TASK)
    stranded = github.render_comment(event("task_stranded", prior_status="RUNNING"), TASK)

    assert "[View pull request](https://github.com/octo/widgets/pull/7)" in completed
    assert "> " + "x" * 499 + "…" in failed
    assert "(last status: RUNNING)" in stranded


def test_github_links_only_to_https_urls() -> None:
    body = github.render_comment(event("pr_created", pr_url="javascript:alert(1)"), TASK)

    assert "javascript" not in body


@pytest.mark.parametrize("event_type", sorted(email.RENDERABLE_EVENTS))
def test_every_email_has_subject_and_body(event_type: str) -> None:
    subject, text = email.RENDERERS[event_type](event(event_type), TASK)

    assert "t-1" in subject and "octo/widgets" in text and "2026-11-23T10:00:00Z" in text


def test_failed_email_includes_the_error() -> None:
    _, text = email.RENDERERS["task_failed"](event("task_failed", error_message="tests failed"), TASK)

    assert text.endswith("Error:\ntests failed")


@pytest.mark.parametrize(
    ("secret", "token"),
    [
        ("ghp_plain", "ghp_plain"),
        ('{"token": "ghp_json"}', "ghp_json"),
        ('{"bot_token": "ghp_bot_key"}', "ghp_bot_key"),
        ("  ghp_spaces\n", "ghp_spaces"),
    ],
)
def test_token_secret_formats(secret: str, token: str) -> None:
    assert github._token_from_secret(secret, "arn") == token


@pytest.mark.parametrize("secret", ["", '{"tok": "x"}', "{not json"])
def test_malformed_token_secret(secret: str) -> None:
    with pytest.raises(MalformedRecordError):
        github._token_from_secret(secret, "arn")


def test_comment_target_prefers_the_pr_then_the_issue() -> None:
    assert github._target(TASK) == github._Target("octo/widgets", 7)
    assert github._target({"task_id": "t", "repo": "o/r", "issue_number": Decimal(3)}) == github._Target("o/r", 3)
    assert github._target({"task_id": "t", "repo": "o/r"}) is None


@pytest.mark.parametrize(
    "task",
    [
        {"task_id": "t", "repo": "not-a-repo", "pr_number": Decimal(1)},
        {"task_id": "t", "repo": "o/r", "pr_number": Decimal("1.5")},
        {"task_id": "t", "repo": "o/r", "pr_number": "seven"},
        {"task_id": "t", "repo": "o/r", "pr_number": True},
        {"task_id": "t", "repo": "o/r", "pr_number": Decimal(0)},
    ],
)
def test_malformed_comment_target(task: dict[str, Any]) -> None:
    with pytest.raises(MalformedRecordError):
        github._target(task)


def test_retry_after_from_headers() -> None:
    assert github._retry_after({"Retry-After": "12"}) == 12.0
    assert github._retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert github._retry_after({"Retry-After": "soon"}) is None
    assert github._retry_after({}) is None
    reset = github._retry_after({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "99999999999"})
    assert reset is not None and reset > 0
