"""Duplicate delivery and redelivery after a partial failure: nothing lost, nothing sent twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.fanout_fixtures import PR_NUMBER, REPO, pr_task
from tests.support.fanout_stream import (
    FanOutTables,
    moto_sent_emails,
    redelivery,
    reported,
    sequence_numbers,
)
from tests.support.github_stub import GitHubStub
from tests.support.moto_server import MotoServer

Invoke = Callable[[dict[str, Any]], dict[str, Any]]


def test_the_same_batch_delivered_twice_notifies_once(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "pr_created", metadata={"pr_url": "https://github.com/octo/widgets/pull/7"})
    tables.put_event("t-1", "e2", "task_completed")
    event = tables.next_batch()

    first = invoke(event)
    comment_after_first = github.comments_on(REPO, PR_NUMBER)
    second = invoke(event)

    assert reported(first) == [] and reported(second) == []
    assert github.comments_on(REPO, PR_NUMBER) == comment_after_first
    assert len(comment_after_first) == 1 and "Completed" in comment_after_first[0]
    assert len(github.received("POST")) == 1
    assert [m["subject"] for m in moto_sent_emails(aws.endpoint)] == ["[bgagent] Task t-1 completed"]


def test_redelivery_after_a_partial_failure_completes_without_duplicates(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    pr_task(tables, "a")
    pr_task(tables, "b", pr_number=8)
    tables.put_event("a", "e1", "task_failed", metadata={"error_message": "build broke"})
    tables.put_event("b", "e1", "task_completed")
    tables.put_event("a", "e2", "task_completed")  # a retried task completing after all
    event = tables.next_batch()
    seq_a1, _, seq_a2 = sequence_numbers(event)
    github.fail_next(503, path_contains=f"/issues/{PR_NUMBER}/")  # task a's first GitHub call

    first = invoke(event)

    assert reported(first) == [seq_a1, seq_a2]  # a's later record held back behind its failure
    assert github.comments_on(REPO, PR_NUMBER) == []
    assert len(github.comments_on(REPO, 8)) == 1
    # Email of a/e1 went out in the first attempt (the email channel ran after GitHub failed).
    assert sorted(m["subject"] for m in moto_sent_emails(aws.endpoint)) == [
        "[bgagent] Task a failed",
        "[bgagent] Task b completed",
    ]

    second = invoke(redelivery(event, first))  # Lambda resends a/e1, b/e1, a/e2

    assert reported(second) == []
    comments_a = github.comments_on(REPO, PR_NUMBER)
    assert len(comments_a) == 1 and "Completed" in comments_a[0]
    assert len(github.comments_on(REPO, 8)) == 1
    assert sorted(m["subject"] for m in moto_sent_emails(aws.endpoint)) == [
        "[bgagent] Task a completed",
        "[bgagent] Task a failed",
        "[bgagent] Task b completed",
    ]


def test_events_of_one_task_reach_github_in_stream_order(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    for task_id, number in (("a", 11), ("b", 12), ("c", 13)):
        pr_task(tables, task_id, pr_number=number)
    for step in range(4):
        for task_id in ("a", "b", "c"):
            tables.put_event(task_id, f"e{step}", "pr_created")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    for task_id in ("a", "b", "c"):
        marker = f"<!-- bgagent-task:{task_id} -->"
        bodies = [r.body["body"] for r in github.received() if r.body and marker in r.body["body"]]
        assert [_event_id(body) for body in bodies] == ["e0", "e1", "e2", "e3"]


def _event_id(body: str) -> str:
    return body.split("event `", 1)[1].split("`", 1)[0]
