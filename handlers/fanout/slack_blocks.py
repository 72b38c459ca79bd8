"""Block Kit messages for the Slack channel, one renderer per task event type.

``RENDERERS`` is the single source of truth for what the Slack dispatcher can post:
``RENDERABLE_EVENTS`` is derived from it, and the routing drift test checks that every event
Slack subscribes to is in that set. Adding a subscription therefore means adding a renderer
here first.

Every message carries a plain ``text`` fallback (used by notifications, screen readers and
clients that do not render blocks). Blocks are built with slack-sdk's Block Kit models, whose
``to_dict()`` validates Slack's size limits before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ContextBlock,
    LinkButtonElement,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from handlers.fanout.model import TaskEvent

# Long agent error messages would push the thread out of view; the full text lives in the logs.
MESSAGE_PREVIEW_LIMIT = 300
ELLIPSIS = "…"


@dataclass(frozen=True)
class SlackMessage:
    text: str  # plain fallback, always set
    blocks: list[dict[str, Any]]


Renderer = Callable[[TaskEvent, Mapping[str, Any]], SlackMessage]


def truncate(text: str, limit: int = MESSAGE_PREVIEW_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _metadata_text(event: TaskEvent, key: str) -> str | None:
    value = event.metadata.get(key)
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _repo(task: Mapping[str, Any]) -> str:
    return str(task.get("repo") or "unknown repository")


def _pull_request_url(event: TaskEvent, task: Mapping[str, Any]) -> str | None:
    url = _metadata_text(event, "pr_url")
    if url and url.startswith(("https://", "http://")):
        return url
    number = str(task.get("pr_number") or "")
    repo = task.get("repo")
    if number.isdigit() and repo:
        return f"https://github.com/{repo}/pull/{number}"
    return None


def _message(
    emoji: str,
    headline: str,
    task: Mapping[str, Any],
    event: TaskEvent,
    *,
    suffix: str = "",
    details: list[Block] | None = None,
    link: str | None = None,
) -> SlackMessage:
    """Standard layout: emoji + headline naming the repo, optional details, PR button, task id."""
    repo = _repo(task)
    headline_text = f"{emoji} {headline} *{escape_mrkdwn(repo)}*{escape_mrkdwn(suffix)}"
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=headline_text))]
    blocks.extend(details or [])
    if link:
        blocks.append(ActionsBlock(elements=[LinkButtonElement(text="View PR", url=link)]))
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Task `{escape_mrkdwn(event.task_id)}`")]))
    return SlackMessage(text=f"{headline} {repo}{suffix}", blocks=[block.to_dict() for block in blocks])


def task_created(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    return _message(":rocket:", "Task created for", task, event)


def session_started(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    return _message(":hourglass_flowing_sand:", "Agent session started for", task, event)


def task_completed(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    return _message(":white_check_mark:", "Task completed for", task, event, link=_pull_request_url(event, task))


def _reason_details(event: TaskEvent) -> list[Block]:
    reason = _metadata_text(event, "reason")
    return [SectionBlock(text=PlainTextObject(text=truncate(reason)))] if reason else []


def task_failed(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    return _message(":x:", "Task failed for", task, event, details=_reason_details(event))


def task_cancelled(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    return _message(":no_entry_sign:", "Task cancelled for", task, event, details=_reason_details(event))


def task_timed_out(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    return _message(":hourglass:", "Task timed out for", task, event, details=_reason_details(event))


def task_stranded(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    # The reconciler stamps the status the task was stuck in; older events carry none, and then
    # the parenthetical is left out rather than showing an empty or "None" status.
    prior_status = _metadata_text(event, "prior_status")
    suffix = f" (last status: {prior_status})" if prior_status else ""
    return _message(":warning:", "Task stranded for", task, event, suffix=suffix)


def agent_error(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    error_type = _metadata_text(event, "error_type")
    preview = _metadata_text(event, "message_preview")
    details: list[Block] = []
    if error_type:
        details.append(SectionBlock(text=MarkdownTextObject(text=f"*Type:* `{escape_mrkdwn(error_type)}`")))
    if preview:
        # Plain text: an error message is arbitrary text and must not be read as mrkdwn.
        details.append(SectionBlock(text=PlainTextObject(text=truncate(preview))))
    message = _message(":rotating_light:", "Agent error on", task, event, details=details)
    # The type is its own block; the fallback text (notifications) names it too.
    return SlackMessage(text=message.text + (f": {error_type}" if error_type else ""), blocks=message.blocks)


RENDERERS: Mapping[str, Renderer] = MappingProxyType(
    {
        "task_created": task_created,
        "session_started": session_started,
        "task_completed": task_completed,
        "task_failed": task_failed,
        "task_cancelled": task_cancelled,
        "task_timed_out": task_timed_out,
        "task_stranded": task_stranded,
        "agent_error": agent_error,
    }
)

RENDERABLE_EVENTS: frozenset[str] = frozenset(RENDERERS)


def render(event: TaskEvent, task: Mapping[str, Any]) -> SlackMessage:
    """The message for ``event``; KeyError if the event type has no renderer."""
    return RENDERERS[event.event_type](event, task)
