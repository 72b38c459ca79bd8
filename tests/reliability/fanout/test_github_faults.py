"""GitHub faults: 401 and token rotation, 403/429/5xx, broken connections, 404 on edit, other 4xx,
and the crash/race windows between creating the comment and recording its id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest

from tests.support.fanout_fixtures import GITHUB_SECRET_NAME, GITHUB_TOKEN, PR_NUMBER, REPO, pr_task
from tests.support.fanout_stream import TASK_TABLE, FanOutTables, redelivery, reported, sequence_numbers
from tests.support.github_stub import DROP_CONNECTION, GitHubStub
from tests.support.moto_server import MotoServer

Invoke = Callable[[dict[str, Any]], dict[str, Any]]


def stored_comment_id(tables: FanOutTables, task_id: str) -> int | None:
    value = tables.task(task_id).get("channel_metadata", {}).get("github_comment_id")
    return None if value is None else int(value)


def channel_warnings(caplog: pytest.LogCaptureFixture, channel: str) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "channel", None) == channel and getattr(r, "retryable", False)]


def test_401_after_token_rotation_rereads_the_secret_and_succeeds(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "pr_created")
    assert reported(invoke(tables.next_batch())) == []  # the old token is now cached in the container

    boto3.client("secretsmanager", endpoint_url=aws.endpoint).put_secret_value(
        SecretId=GITHUB_SECRET_NAME, SecretString="ghp_rotated"
    )
    github.accepted_tokens = {"ghp_rotated"}
    tables.put_event("t-1", "e2", "task_completed")
    response = invoke(tables.next_batch())

    assert reported(response) == []
    last_two = github.received()[-2:]
    assert [(r.method, r.token, r.status) for r in last_two] == [
        ("PATCH", GITHUB_TOKEN, 401),
        ("PATCH", "ghp_rotated", 200),
    ]
    comments = github.comments_on(REPO, PR_NUMBER)
    assert len(comments) == 1 and "Completed" in comments[0]


def test_persistent_401_fails_the_record_and_a_later_redelivery_delivers(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    github.accepted_tokens = {"ghp_fixed"}
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()

    first = invoke(event)

    assert reported(first) == sequence_numbers(event)
    assert [r.status for r in github.received()] == [401, 401]  # one retry with a freshly read token
    assert github.comments_on(REPO, PR_NUMBER) == []

    boto3.client("secretsmanager", endpoint_url=aws.endpoint).put_secret_value(
        SecretId=GITHUB_SECRET_NAME, SecretString="ghp_fixed"
    )
    second = invoke(redelivery(event, first))

    assert reported(second) == []
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (403, {"Retry-After": "60"}, 60.0),
        (429, {"Retry-After": "7"}, 7.0),
        (500, {}, None),
        (502, {}, None),
        (503, {"Retry-After": "3"}, 3.0),
    ],
)
def test_rate_limits_and_5xx_are_retryable(
    status: int,
    headers: dict[str, str],
    retry_after: float | None,
    tables: FanOutTables,
    github: GitHubStub,
    invoke: Invoke,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_failed")
    event = tables.next_batch()
    github.fail_next(status, method="GET", headers=headers, message="API rate limit exceeded")

    first = invoke(event)

    assert reported(first) == sequence_numbers(event)
    assert github.comments_on(REPO, PR_NUMBER) == []
    warnings = channel_warnings(caplog, "github")
    assert len(warnings) == 1 and warnings[0].retry_after_seconds == retry_after

    second = invoke(redelivery(event, first))

    assert reported(second) == []
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"}, "API rate limit exceeded"),
        ({}, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."),
    ],
    ids=["primary-limit-headers", "secondary-limit-message-only"],
)
def test_403_that_is_a_rate_limit_is_retryable(
    headers: dict[str, str], message: str, tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_failed")
    event = tables.next_batch()
    github.fail_next(403, method="GET", headers=headers, message=message)

    first = invoke(event)
    assert reported(first) == sequence_numbers(event)
    assert github.comments_on(REPO, PR_NUMBER) == []

    assert reported(invoke(redelivery(event, first))) == []
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Resource not accessible by integration"),  # the token lacks the permission
        ({"X-RateLimit-Remaining": "4999"}, "Unable to create comment because issue is locked."),
    ],
    ids=["missing-permission", "locked-issue"],
)
def test_403_without_rate_limit_headers_is_terminal_not_retried_until_the_dlq(
    headers: dict[str, str],
    message: str,
    tables: FanOutTables,
    github: GitHubStub,
    invoke: Invoke,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    github.fail_next(403, method="POST", headers=headers, message=message)

    response = invoke(tables.next_batch())

    assert reported(response) == []  # acknowledged: no redelivery can make GitHub accept it
    assert github.comments_on(REPO, PR_NUMBER) == []
    assert channel_warnings(caplog, "github") == []
    assert any(getattr(r, "channel", None) == "github" and r.levelname == "ERROR" for r in caplog.records)


def test_a_broken_connection_is_retryable(tables: FanOutTables, github: GitHubStub, invoke: Invoke) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()
    github.fail_next(DROP_CONNECTION, method="GET")

    first = invoke(event)
    second = invoke(redelivery(event, first))

    assert reported(first) == sequence_numbers(event)
    assert reported(second) == []
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1


def test_other_4xx_is_terminal_and_not_retried(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, caplog: pytest.LogCaptureFixture
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    github.fail_next(422, method="POST", message="Validation Failed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert github.comments_on(REPO, PR_NUMBER) == []
    assert any(getattr(r, "channel", None) == "github" and r.levelname == "ERROR" for r in caplog.records)


def test_404_on_edit_creates_a_new_comment_and_saves_its_id(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "pr_created")
    invoke(tables.next_batch())
    deleted_id = stored_comment_id(tables, "t-1")
    assert deleted_id is not None
    github.delete_comment(deleted_id)  # someone removed it in GitHub's UI

    tables.put_event("t-1", "e2", "task_completed")
    response = invoke(tables.next_batch())

    assert reported(response) == []
    (new_id,) = github.comment_ids_on(REPO, PR_NUMBER)
    assert new_id != deleted_id
    assert stored_comment_id(tables, "t-1") == new_id
    assert "Completed" in github.comments_on(REPO, PR_NUMBER)[0]


def test_crash_between_creating_the_comment_and_saving_its_id_does_not_duplicate(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()
    invoke(event)
    created_id = stored_comment_id(tables, "t-1")
    # The save never happened (the container died right after GitHub answered the create).
    tables.update_task("t-1", "REMOVE #cm.#cid", {"#cm": "channel_metadata", "#cid": "github_comment_id"})

    response = invoke(event)  # Lambda redelivers the record

    assert reported(response) == []
    assert github.comment_ids_on(REPO, PR_NUMBER) == [created_id]  # adopted, not created again
    assert stored_comment_id(tables, "t-1") == created_id
    assert len(github.received("POST")) == 1


def test_losing_the_conditional_save_race_deletes_our_duplicate(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()

    def competing_invocation_wins() -> None:
        # An overlapping invocation (a timed-out predecessor) created and saved its comment
        # after our list found nothing and just before our create.
        winner = github.add_comment(REPO, PR_NUMBER, "<!-- bgagent-task:t-1 -->\nolder state")
        tables.update_task(
            "t-1", "SET #cm.#cid = :id", {"#cm": "channel_metadata", "#cid": "github_comment_id"}, {":id": winner}
        )

    github.run_before_next(competing_invocation_wins, method="POST")

    first = invoke(event)

    assert reported(first) == sequence_numbers(event)
    (winner_id,) = github.comment_ids_on(REPO, PR_NUMBER)  # our duplicate was deleted
    assert stored_comment_id(tables, "t-1") == winner_id

    second = invoke(redelivery(event, first))

    assert reported(second) == []
    assert github.comment_ids_on(REPO, PR_NUMBER) == [winner_id]
    assert "Completed" in github.comments_on(REPO, PR_NUMBER)[0]


def test_marker_search_follows_pagination(tables: FanOutTables, github: GitHubStub, invoke: Invoke) -> None:
    for n in range(130):
        github.add_comment(REPO, PR_NUMBER, f"human comment {n}")
    ours = github.add_comment(REPO, PR_NUMBER, "<!-- bgagent-task:t-1 -->\nposted before a crash")
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert stored_comment_id(tables, "t-1") == ours
    assert len(github.comments_on(REPO, PR_NUMBER)) == 131
    assert [r.method for r in github.received()] == ["GET", "GET", "PATCH"]


def test_task_table_is_never_upserted_for_a_vanished_task(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")
    event = tables.next_batch()
    github.run_before_next(
        lambda: boto3.client("dynamodb", endpoint_url=aws.endpoint).delete_item(
            TableName=TASK_TABLE, Key={"task_id": {"S": "t-1"}}
        ),
        method="POST",
    )

    response = invoke(event)

    assert reported(response) == sequence_numbers(event)
    item = boto3.client("dynamodb", endpoint_url=aws.endpoint).get_item(
        TableName=TASK_TABLE, Key={"task_id": {"S": "t-1"}}
    )
    assert "Item" not in item
