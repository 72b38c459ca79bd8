"""Which channels an event goes to: event catalogue, channel defaults, per-task overrides, cap.

Pure logic, no I/O.

Per-task overrides live in the task row's ``notifications`` map, one entry per channel::

    notifications = {
        "slack":  {"enabled": False},                           # disabled -> nothing
        "github": {"events": ["default", "agent_error"]},       # "default" expands to the defaults
        "email":  {"events": ["task_failed"],                   # a list replaces the defaults
                   "recipients": ["dev@example.com"]},          # (email only) who gets the mail
    }

- no ``notifications``, no entry for the channel, or an entry without ``events`` -> the
  channel's defaults;
- ``enabled: false`` -> the channel gets nothing for this task;
- ``events: []`` -> muted: nothing, with a warning (an empty list is more likely a mistake
  than ``enabled: false``, so it is logged);
- ``events`` containing the word ``"default"`` -> the defaults plus the other listed events;
- any other list -> exactly those events.

A ``notifications`` value of the wrong shape (not a map, ``enabled`` not a boolean,
``events`` not a list of strings) is malformed input: ``MalformedRecordError`` names the
field, and the record goes to the on-failure destination instead of guessing what the user
meant (guessing "defaults" would un-mute a user who tried to mute).

Listing an event a channel cannot render is allowed; its dispatcher answers SKIPPED for it.

Per-task cap: at most ``PER_TASK_EVENT_CAP`` events of one task are delivered per
invocation. Only events that would reach at least one channel count, so unrouted chatter
(milestones, status responses) cannot push a terminal notification over the cap. Events over
the cap are dropped -- acknowledged, not retried -- with a metric and a log line: a task
emitting more than that in one batch is misbehaving and must not flood its channels.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from handlers.fanout.model import MalformedRecordError

TASK_CREATED = "task_created"
SESSION_STARTED = "session_started"
TASK_COMPLETED = "task_completed"
TASK_FAILED = "task_failed"
TASK_CANCELLED = "task_cancelled"
TASK_TIMED_OUT = "task_timed_out"
TASK_STRANDED = "task_stranded"
AGENT_ERROR = "agent_error"
PR_CREATED = "pr_created"
APPROVAL_REQUIRED = "approval_required"
STATUS_RESPONSE = "status_response"
AGENT_MILESTONE = "agent_milestone"

EVENT_TYPES = frozenset(
    {
        TASK_CREATED,
        SESSION_STARTED,
        TASK_COMPLETED,
        TASK_FAILED,
        TASK_CANCELLED,
        TASK_TIMED_OUT,
        TASK_STRANDED,
        AGENT_ERROR,
        PR_CREATED,
        APPROVAL_REQUIRED,
        STATUS_RESPONSE,
        AGENT_MILESTONE,
    }
)

TERMINAL_EVENTS = frozenset({TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED, TASK_STRANDED})

SLACK = "slack"
GITHUB = "github"
EMAIL = "email"
CHANNELS = (SLACK, GITHUB, EMAIL)

CHANNEL_DEFAULTS: Mapping[str, frozenset[str]] = {
    # approval_required / status_response stay out until their Slack renderers exist.
    SLACK: TERMINAL_EVENTS | {TASK_TIMED_OUT, TASK_CREATED, SESSION_STARTED, AGENT_ERROR},
    GITHUB: TERMINAL_EVENTS | {PR_CREATED},
    # approval_required joins once its emitter and renderer exist.
    EMAIL: frozenset({TASK_COMPLETED, TASK_FAILED}),
}

DEFAULT_WORD = "default"
PER_TASK_EVENT_CAP = 20


@dataclass(frozen=True)
class ChannelSubscription:
    channel: str
    events: frozenset[str]
    muted_by_empty_list: bool = False  # the caller logs a warning for this one


def resolve_subscription(channel: str, notifications: object) -> ChannelSubscription:
    """The events ``channel`` delivers for a task whose row has this ``notifications`` value."""
    defaults = CHANNEL_DEFAULTS[channel]
    override = _channel_override(channel, notifications)
    if override is None:
        return ChannelSubscription(channel, defaults)
    enabled = override.get("enabled", True)
    if not isinstance(enabled, bool):
        raise MalformedRecordError(f"notifications.{channel}.enabled must be a boolean, got {enabled!r}")
    if not enabled:
        return ChannelSubscription(channel, frozenset())
    events = override.get("events")
    if events is None:
        return ChannelSubscription(channel, defaults)
    listed = _event_list(channel, events)
    if not listed:
        return ChannelSubscription(channel, frozenset(), muted_by_empty_list=True)
    if DEFAULT_WORD in listed:
        return ChannelSubscription(channel, defaults | (frozenset(listed) - {DEFAULT_WORD}))
    return ChannelSubscription(channel, frozenset(listed))


def channels_for(event_type: str, notifications: object, configured: Iterable[str]) -> tuple[list[str], list[str]]:
    """(channels that deliver ``event_type``, channels muted by an empty list) among ``configured``."""
    targets: list[str] = []
    muted: list[str] = []
    for channel in configured:
        subscription = resolve_subscription(channel, notifications)
        if subscription.muted_by_empty_list:
            muted.append(channel)
        elif event_type in subscription.events:
            targets.append(channel)
    return targets, muted


def email_recipients(notifications: object) -> list[str]:
    """Recipients from ``notifications.email.recipients`` (empty when not set)."""
    override = _channel_override(EMAIL, notifications)
    if override is None or override.get("recipients") is None:
        return []
    recipients = override["recipients"]
    if not isinstance(recipients, _STRING_COLLECTIONS) or not all(isinstance(r, str) and r for r in recipients):
        raise MalformedRecordError("notifications.email.recipients must be a list of non-empty strings")
    return sorted(recipients) if isinstance(recipients, (set, frozenset)) else list(dict.fromkeys(recipients))


class TaskEventBudget:
    """Counts delivered events per task during one invocation (thread-safe: keys run concurrently)."""

    def __init__(self, cap: int = PER_TASK_EVENT_CAP) -> None:
        self.cap = cap
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, task_id: str) -> bool:
        """Take one slot for ``task_id``; False when the task already used its cap."""
        with self._lock:
            used = self._counts.get(task_id, 0)
            if used >= self.cap:
                return False
            self._counts[task_id] = used + 1
            return True


# A DynamoDB list (L) arrives as a list, a string set (SS) as a set: both are accepted.
_STRING_COLLECTIONS = (list, tuple, set, frozenset)


def _channel_override(channel: str, notifications: object) -> Mapping[str, Any] | None:
    if notifications is None:
        return None
    if not isinstance(notifications, Mapping):
        raise MalformedRecordError(f"task notifications must be a map, got {type(notifications).__name__}")
    override = notifications.get(channel)
    if override is None:
        return None
    if not isinstance(override, Mapping):
        raise MalformedRecordError(f"notifications.{channel} must be a map, got {type(override).__name__}")
    return override


def _event_list(channel: str, events: object) -> list[str]:
    if not isinstance(events, _STRING_COLLECTIONS) or not all(isinstance(e, str) for e in events):
        raise MalformedRecordError(f"notifications.{channel}.events must be a list of strings")
    return list(events)
