"""Block Kit renderers of the Slack channel: pure functions of (event, task row)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from handlers.fanout.model import Scalar, TaskEvent
from handlers.fanout.slack_blocks import (
    MESSAGE_PREVIEW_LIMIT,
    RENDERABLE_EVENTS,
    RENDERERS,
    render,
    truncate,
)

TASK: Mapping[str, Any] = {"task_id": "task-9", "repo": "octo/widgets"}


def event(event_type: str, **metadata: Scalar) -> TaskEvent:
    return TaskEvent(
        task_id="task-9", event_id="evt-1", event_type=event_type, timestamp="2026-11-23T14:00:00Z", metadata=metadata
    )


def all_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks)


def test_renderable_events_are_exactly_the_renderer_table() -> None:
    assert frozenset(RENDERERS) == RENDERABLE_EVENTS
    assert {
        "task_created",
        "session_started",
        "task_completed",
        "task_failed",
        "task_cancelled",
        "task_timed_out",
        "task_stranded",
        "agent_error",
    } == RENDERABLE_EVENTS


@pytest.mark.parametrize("event_type", sorted(RENDERABLE_EVENTS))
def test_every_renderable_event_has_fallback_text_blocks_and_the_repo(event_type: str) -> None:
    message = render(event(event_type), TASK)

    assert message.text.strip() and "octo/widgets" in message.text
    assert message.blocks and all("type" in block for block in message.blocks)
    assert "octo/widgets" in message.blocks[0]["text"]["text"]
    assert "task-9" in all_text(message.blocks)
    assert "None" not in all_text(message.blocks)


def test_unknown_event_has_no_renderer() -> None:
    with pytest.raises(KeyError):
        render(event("approval_required"), TASK)


def test_stranded_with_prior_status_names_it() -> None:
    message = render(event("task_stranded", prior_status="HYDRATING"), TASK)

    assert message.text == "Task stranded for octo/widgets (last status: HYDRATING)"
    assert message.blocks[0]["text"]["text"] == ":warning: Task stranded for *octo/widgets* (last status: HYDRATING)"


def test_stranded_without_prior_status_leaves_the_parenthetical_out() -> None:
    message = render(event("task_stranded"), TASK)

    assert message.text == "Task stranded for octo/widgets"
    assert "last status" not in all_text(message.blocks)


def test_agent_error_with_metadata_shows_type_and_preview() -> None:
    message = render(event("agent_error", error_type="ToolTimeout", message_preview="pytest <hung> & died"), TASK)

    assert message.text == "Agent error on octo/widgets: ToolTimeout"
    assert message.blocks[0]["text"]["text"].startswith(":rotating_light:")
    texts = [block["text"] for block in message.blocks if block["type"] == "section"]
    assert {"type": "mrkdwn", "text": "*Type:* `ToolTimeout`"} in texts
    # the preview is plain text: arbitrary error output is never interpreted as mrkdwn
    assert any(t["type"] == "plain_text" and t["text"] == "pytest <hung> & died" for t in texts)


def test_agent_error_without_metadata_stays_clean() -> None:
    message = render(event("agent_error"), TASK)

    assert message.text == "Agent error on octo/widgets"
    assert "Type:" not in all_text(message.blocks)
    assert len([b for b in message.blocks if b["type"] == "section"]) == 1


def test_agent_error_preview_is_truncated() -> None:
    message = render(event("agent_error", error_type="Trace", message_preview="x" * 5000), TASK)

    [preview] = [
        b["text"]["text"] for b in message.blocks if b["type"] == "section" and b["text"]["type"] == "plain_text"
    ]
    assert len(preview) == MESSAGE_PREVIEW_LIMIT
    assert preview.endswith("…")


def test_truncate_keeps_short_text_and_cuts_long_text() -> None:
    assert truncate("  short  ") == "short"
    assert truncate("abcdef", limit=4) == "abc…"


def test_completed_links_the_pull_request_from_the_event_or_the_task() -> None:
    from_event = render(event("task_completed", pr_url="https://github.com/octo/widgets/pull/7"), TASK)
    from_task = render(event("task_completed"), {**TASK, "pr_number": 12})
    without = render(event("task_completed"), TASK)

    assert "https://github.com/octo/widgets/pull/7" in all_text(from_event.blocks)
    assert "https://github.com/octo/widgets/pull/12" in all_text(from_task.blocks)
    assert not [b for b in without.blocks if b["type"] == "actions"]


def test_mrkdwn_control_characters_in_the_repo_are_escaped() -> None:
    message = render(event("task_created"), {"task_id": "t", "repo": "a<b>&c"})

    assert "*a&lt;b&gt;&amp;c*" in message.blocks[0]["text"]["text"]
    assert message.text == "Task created for a<b>&c"


def test_failed_shows_the_reason_when_given() -> None:
    message = render(event("task_failed", reason="Build broke"), TASK)

    assert {"type": "plain_text", "text": "Build broke"} in [
        b["text"] for b in message.blocks if b["type"] == "section"
    ]
