"""Router: which channels run, how their results classify the record, what is logged and counted."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics

from handlers.fanout.deadline import NO_DEADLINE, Deadline, DeadlineExceededError
from handlers.fanout.model import MalformedRecordError, Outcome, RetryableError, TaskEvent
from handlers.fanout.router import ChannelDeliveryError, Router, TaskNotFoundError
from handlers.fanout.routing import TaskEventBudget


class ScriptedDispatcher:
    """A channel whose answer the test chooses; records what it was asked to deliver."""

    def __init__(self, channel: str, answer: Outcome | Exception = Outcome.DELIVERED) -> None:
        self.channel = channel
        self.answer = answer
        self.received: list[str] = []

    def dispatch(self, event: TaskEvent, task: Mapping[str, Any], deadline: Deadline = NO_DEADLINE) -> Outcome:
        self.received.append(event.event_id)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    metrics = Metrics(namespace="RouterTest", service="fanout")
    metrics.clear_metrics()
    yield metrics
    metrics.clear_metrics()


def make_router(metrics: Metrics, *dispatchers: ScriptedDispatcher) -> Router:
    return Router(list(dispatchers), logger=Logger(service="router-test"), metrics=metrics)


def event(event_type: str = "task_completed", event_id: str = "e1", task_id: str = "t1") -> TaskEvent:
    return TaskEvent(task_id=task_id, event_id=event_id, event_type=event_type, timestamp="2026-11-23T10:00:00Z")


TASK = {"task_id": "t1", "repo": "o/r"}


def counted(metrics: Metrics) -> dict[str, float]:
    return {name: sum(entry["Value"]) for name, entry in metrics.metric_set.items()}


def log_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """Each log record as its message, level and structured extra keys."""
    return [{**vars(record), "message": record.getMessage(), "level": record.levelname} for record in caplog.records]


def test_subscribed_channels_are_dispatched_in_channel_order(metrics: Metrics) -> None:
    email, slack, github = ScriptedDispatcher("email"), ScriptedDispatcher("slack"), ScriptedDispatcher("github")
    router = make_router(metrics, email, slack, github)

    outcomes = router.deliver(event("task_completed"), TASK, TaskEventBudget())

    assert list(outcomes) == ["slack", "github", "email"]
    assert set(outcomes.values()) == {Outcome.DELIVERED}
    assert counted(metrics) == {"slack_delivered": 1, "github_delivered": 1, "email_delivered": 1}


def test_only_subscribed_channels_run(metrics: Metrics) -> None:
    slack, github, email = ScriptedDispatcher("slack"), ScriptedDispatcher("github"), ScriptedDispatcher("email")
    router = make_router(metrics, slack, github, email)

    router.deliver(event("pr_created"), TASK, TaskEventBudget())

    assert (slack.received, github.received, email.received) == ([], ["e1"], [])


def test_retryable_channel_fails_the_record_but_the_others_still_run(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    slack = ScriptedDispatcher("slack", RetryableError("ratelimited", retry_after_seconds=30))
    github = ScriptedDispatcher("github")
    router = make_router(metrics, slack, github)

    with pytest.raises(ChannelDeliveryError) as raised:
        router.deliver(event("task_failed"), TASK, TaskEventBudget())

    assert set(raised.value.failed_channels) == {"slack"}
    assert raised.value.retry_after_seconds == 30
    assert github.received == ["e1"]
    warning = next(line for line in log_lines(caplog) if line.get("channel") == "slack")
    assert warning["retryable"] is True and warning["retry_after_seconds"] == 30
    assert counted(metrics) == {"slack_retryable_failure": 1, "github_delivered": 1}


def test_unexpected_exception_fails_the_record_naming_the_channel(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    github = ScriptedDispatcher("github", KeyError("boom"))
    router = make_router(metrics, github)

    with pytest.raises(ChannelDeliveryError, match="github"):
        router.deliver(event("task_failed"), TASK, TaskEventBudget())

    line = next(line for line in log_lines(caplog) if line.get("channel") == "github")
    assert line["retryable"] is True and "KeyError" in line["error"]


def test_a_dispatchers_malformed_record_error_is_logged_as_malformed_with_its_reason(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    slack = ScriptedDispatcher("slack", MalformedRecordError("slack task t1 lacks channel_metadata slack_team_id"))
    github = ScriptedDispatcher("github")
    router = make_router(metrics, slack, github)

    with pytest.raises(ChannelDeliveryError, match="slack"):  # the record fails: it ends in the DLQ, named
        router.deliver(event("task_failed"), TASK, TaskEventBudget())

    assert github.received == ["e1"]
    [line] = [line for line in log_lines(caplog) if line.get("channel") == "slack"]
    assert line["level"] == "ERROR"
    assert "malformed" in line["message"].lower() and "unexpected" not in line["message"].lower()
    assert line["reason"] == "slack task t1 lacks channel_metadata slack_team_id"
    assert line["retryable"] is False
    assert counted(metrics) == {"slack_malformed_record": 1, "github_delivered": 1}


def test_terminal_failure_is_logged_and_counted_not_raised(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    router = make_router(metrics, ScriptedDispatcher("email", Outcome.TERMINAL_FAILURE))

    outcomes = router.deliver(event("task_completed"), TASK, TaskEventBudget())

    assert outcomes == {"email": Outcome.TERMINAL_FAILURE}
    assert counted(metrics) == {"email_terminal_failure": 1}
    line = next(line for line in log_lines(caplog) if line.get("channel") == "email")
    assert line["level"] == "ERROR" and line["retryable"] is False


def test_missing_task_row_is_a_malformed_record(metrics: Metrics) -> None:
    github = ScriptedDispatcher("github")
    router = make_router(metrics, github)

    with pytest.raises(TaskNotFoundError, match="task t1 referenced by event e1") as raised:
        router.deliver(event("task_completed"), None, TaskEventBudget())

    assert isinstance(raised.value, MalformedRecordError)
    assert github.received == []


def test_unrouted_event_is_acknowledged_and_counted(metrics: Metrics) -> None:
    router = make_router(metrics, ScriptedDispatcher("github"))

    assert router.deliver(event("status_response"), TASK, TaskEventBudget()) == {}
    assert counted(metrics) == {"event_unrouted": 1}


def test_muted_channel_logs_a_warning(metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    github, email = ScriptedDispatcher("github"), ScriptedDispatcher("email")
    router = make_router(metrics, github, email)
    task = {**TASK, "notifications": {"github": {"events": []}}}

    router.deliver(event("task_completed"), task, TaskEventBudget())

    assert github.received == [] and email.received == ["e1"]
    assert any(line.get("channel") == "github" and line["level"] == "WARNING" for line in log_lines(caplog))


def test_events_over_the_per_task_cap_are_dropped_with_metric_and_log(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    github = ScriptedDispatcher("github")
    router = make_router(metrics, github)
    budget = TaskEventBudget()

    for n in range(23):
        router.deliver(event("task_completed", event_id=f"e{n}"), TASK, budget)
    router.deliver(event("task_completed", event_id="other", task_id="t2"), {**TASK, "task_id": "t2"}, budget)

    assert github.received == [f"e{n}" for n in range(20)] + ["other"]
    assert counted(metrics)["event_dropped_over_cap"] == 3
    assert sum("cap" in line.get("message", "") for line in log_lines(caplog)) == 3


def test_unrouted_events_do_not_use_the_cap(metrics: Metrics) -> None:
    github = ScriptedDispatcher("github")
    router = make_router(metrics, github)
    budget = TaskEventBudget(cap=2)

    for n in range(5):
        router.deliver(event("agent_milestone", event_id=f"m{n}"), TASK, budget)
    router.deliver(event("task_completed", event_id="done"), TASK, budget)

    assert github.received == ["done"]


def test_dispatchers_for_unknown_channels_are_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="teams"):
        make_router(metrics, ScriptedDispatcher("teams"))


def test_the_deadline_reaches_every_channel_and_a_channel_out_of_time_stops_the_later_ones(metrics: Metrics) -> None:
    class OutOfTime(ScriptedDispatcher):
        deadlines: list[Deadline]

        def dispatch(self, event: TaskEvent, task: Mapping[str, Any], deadline: Deadline = NO_DEADLINE) -> Outcome:
            self.deadlines.append(deadline)
            deadline.require(5.0, "a slow step")
            return Outcome.DELIVERED

    slack, github, email = OutOfTime("slack"), ScriptedDispatcher("github"), ScriptedDispatcher("email")
    slack.deadlines = []
    deadline = Deadline.after(1.0)
    router = make_router(metrics, slack, github, email)

    with pytest.raises(ChannelDeliveryError) as raised:
        router.deliver(event("task_completed"), TASK, TaskEventBudget(), deadline)

    assert slack.deadlines == [deadline]
    assert github.received == [] and email.received == []  # not started: the redelivery runs them
    assert set(raised.value.failed_channels) == {"slack", "github", "email"}
    assert all(isinstance(e, DeadlineExceededError) for e in raised.value.failed_channels.values())
    assert counted(metrics) == {
        "slack_retryable_failure": 1,
        "github_deadline_not_started": 1,
        "email_deadline_not_started": 1,
    }
