"""GitHub faults: 401 and token rotation, 403/429/5xx, broken connections, 404 on edit, other 4xx,
the crash/race windows between creating the comment and recording its id, replays of older
events (the comment only moves forward), and repo rows naming a token secret the role may not read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest

from tests.support.fanout_fixtures import GITHUB_SECRET_NAME, GITHUB_TOKEN, PR_NUMBER, REPO, pr_task
from tests.support.fanout_stream import (
    TASK_TABLE,
    FanOutTables,
    moto_sent_emails,
    redelivery,
    reported,
    sequence_numbers,
)
from tests.support.github_stub import DROP_CONNECTION, GitHubStub
from tests.support.moto_server import MotoServer

Invoke = Callable[[dict[str, Any]], dict[str, Any]]
# What the construct passes for github_repo_secret_prefix="bgagent/github/" in moto's account and region.
REPO_SECRET_ARN_PREFIX = "arn:aws:secretsmanager:us-east-1:123456789012:secret:bgagent/github/"


@pytest.fixture
def repo_secret_prefix(fanout_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The deployment gave github_repo_secret_prefix (set before the handler's cold start)."""
    monkeypatch.setenv("GITHUB_REPO_SECRET_ARN_PREFIX", REPO_SECRET_ARN_PREFIX)
    return REPO_SECRET_ARN_PREFIX


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


# -- per-repository token secrets -------------------------------------------------------------


def refusals(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if getattr(r, "error_id", None) == "FANOUT_GITHUB_REPO_SECRET_REFUSED"]


@pytest.mark.usefixtures("repo_secret_prefix")
def test_a_repo_secret_under_the_configured_prefix_is_used(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=aws.endpoint)
    arn = secrets.create_secret(Name="bgagent/github/octo", SecretString='{"token": "ghp_repo"}')["ARN"]
    tables.put_repo(REPO, github_token_secret_arn=arn)
    github.accepted_tokens = {"ghp_repo"}
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert {r.token for r in github.received()} == {"ghp_repo"}
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1
    assert refusals(caplog) == []


@pytest.mark.parametrize(
    "secret",
    [
        "created:other/octo",  # a readable secret, but outside the prefix the role may read
        "arn:aws:secretsmanager:us-east-1:999999999999:secret:bgagent/github/octo-AbCdEf",  # another account
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:bgagent/github/octo-AbCdEf",  # another region
        "bgagent/github/octo",  # a name, not the ARN the attribute holds
    ],
    ids=["other-prefix", "other-account", "other-region", "bare-name"],
)
@pytest.mark.usefixtures("repo_secret_prefix")
def test_a_repo_secret_outside_the_prefix_is_refused_terminally_and_never_read(
    secret: str,
    tables: FanOutTables,
    github: GitHubStub,
    invoke: Invoke,
    aws: MotoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=aws.endpoint)
    if secret.startswith("created:"):
        secret = secrets.create_secret(Name=secret.removeprefix("created:"), SecretString="ghp_other")["ARN"]
    tables.put_repo(REPO, github_token_secret_arn=secret)
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []  # terminal for GitHub: no redelivery can make the role read it
    assert github.received() == []  # not with that token, and not with the stack-wide one either
    (refusal,) = refusals(caplog)
    assert refusal.levelname == "ERROR"
    assert (refusal.channel, refusal.repo, refusal.secret_arn) == ("github", REPO, secret)
    assert moto_sent_emails(aws.endpoint), "the other channels still deliver"


def test_without_a_prefix_a_repo_row_naming_a_secret_is_refused(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=aws.endpoint)
    arn = secrets.create_secret(Name="bgagent/github/octo", SecretString='{"token": "ghp_repo"}')["ARN"]
    tables.put_repo(REPO, github_token_secret_arn=arn)
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert github.received() == []
    (refusal,) = refusals(caplog)
    assert (refusal.levelname, refusal.repo, refusal.secret_arn) == ("ERROR", REPO, arn)


def test_without_a_prefix_a_repo_row_without_a_secret_uses_the_stack_wide_token(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, caplog: pytest.LogCaptureFixture
) -> None:
    tables.put_repo(REPO)
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")

    assert reported(invoke(tables.next_batch())) == []
    assert {r.token for r in github.received()} == {GITHUB_TOKEN}
    assert refusals(caplog) == []


# -- replays: the comment only moves forward ------------------------------------------------


def applied_sequence(tables: FanOutTables, task_id: str) -> str | None:
    value = tables.task(task_id).get("channel_metadata", {}).get("github_applied_sequence")
    return None if value is None else str(int(value))


def test_a_replay_of_an_older_event_does_not_roll_the_comment_back(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "pr_created")
    tables.put_event("t-1", "e2", "task_completed")
    event = tables.next_batch()
    assert reported(invoke(event)) == []
    assert "Completed" in github.comments_on(REPO, PR_NUMBER)[0]
    requests_before = len(github.received())
    # Lambda redelivers from the lowest failed sequence number of the batch (another task's
    # record failed), and a bisected or shorter redelivery can end with this task's older event.
    older = {"Records": [event["Records"][0]]}

    response = invoke(older)

    assert reported(response) == []
    [comment] = github.comments_on(REPO, PR_NUMBER)
    assert "Completed" in comment and "Pull request opened" not in comment
    assert github.received()[requests_before:] == []  # no PATCH (nor any other call) for the older event
    assert applied_sequence(tables, "t-1") == sequence_numbers(event)[1]


def test_the_same_event_redelivered_after_a_crash_between_the_claim_and_the_edit_still_edits(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "pr_created")
    assert reported(invoke(tables.next_batch())) == []
    tables.put_event("t-1", "e2", "task_completed")
    event = tables.next_batch()
    github.fail_next(DROP_CONNECTION, method="PATCH")  # the edit never reaches GitHub (as if we died)

    first = invoke(event)

    assert reported(first) == sequence_numbers(event)
    # The forward move was claimed before the edit: the row is ahead of the comment now.
    assert applied_sequence(tables, "t-1") == sequence_numbers(event)[0]
    assert "Pull request opened" in github.comments_on(REPO, PR_NUMBER)[0]

    second = invoke(redelivery(event, first))

    assert reported(second) == []
    [comment] = github.comments_on(REPO, PR_NUMBER)
    assert "Completed" in comment
    assert [r.status for r in github.received("PATCH")] == [DROP_CONNECTION, 200]
