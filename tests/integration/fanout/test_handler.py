"""The fan-out handler driven with records read from the moto task-events stream.

GitHub is a local HTTP stub, email goes through moto's SES v2, tables and secrets live in moto.
Assertions are on what each channel received and which records were reported (SequenceNumbers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import boto3
import pytest

from handlers.common.aws import client
from handlers.common.config import ConfigurationError
from tests.support.fanout_fixtures import GITHUB_SECRET_NAME, GITHUB_TOKEN, PR_NUMBER, RECIPIENT, REPO, pr_task
from tests.support.fanout_stream import (
    EMAIL_SENDER,
    REPO_TABLE,
    FanOutTables,
    fresh_handler_module,
    moto_sent_emails,
    reported,
    sequence_numbers,
)
from tests.support.github_stub import GitHubStub
from tests.support.moto_server import MotoServer

Invoke = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
def repo_secret_prefix(fanout_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-repo secrets under bgagent/github/ are allowed (github_repo_secret_prefix), set before the cold start."""
    monkeypatch.setenv(
        "GITHUB_REPO_SECRET_ARN_PREFIX", "arn:aws:secretsmanager:us-east-1:123456789012:secret:bgagent/github/"
    )


def test_events_reach_github_and_email(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_created")
    tables.put_event(
        "t-1",
        "e2",
        "agent_milestone",
        metadata={"milestone": "pr_created", "pr_url": "https://github.com/octo/widgets/pull/7"},
    )
    tables.put_event("t-1", "e3", "task_completed", metadata={"pr_url": "https://github.com/octo/widgets/pull/7"})

    response = invoke(tables.next_batch())

    assert reported(response) == []
    comments = github.comments_on(REPO, PR_NUMBER)
    assert len(comments) == 1
    assert "<!-- bgagent-task:t-1 -->" in comments[0] and "Completed" in comments[0] and "`e3`" in comments[0]
    assert [r.method for r in github.received()] == ["GET", "POST", "PATCH"]  # adopt-check, create, edit
    assert {r.token for r in github.received()} == {GITHUB_TOKEN}
    assert tables.task("t-1")["channel_metadata"]["github_comment_id"] == github.comment_ids_on(REPO, PR_NUMBER)[0]
    mails = moto_sent_emails(aws.endpoint)
    assert [(m["source"], m["destinations"]["ToAddresses"], m["subject"]) for m in mails] == [
        (EMAIL_SENDER, [RECIPIENT], "[bgagent] Task t-1 completed"),
    ]
    assert "https://github.com/octo/widgets/pull/7" in mails[0]["body"]
    assert tables.task("t-1")["channel_metadata"]["email:e3"]["state"] == "sent"


def test_malformed_records_fail_alone_and_are_reported_by_sequence_number(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "good")
    for task_id in ("no-type", "bad-type"):
        pr_task(tables, task_id)
    tables.put_raw_event(
        {"task_id": {"S": "no-type"}, "event_id": {"S": "e1"}, "timestamp": {"S": "2026-11-23T10:00:00Z"}}
    )
    tables.put_raw_event(
        {
            "task_id": {"S": "bad-type"},
            "event_id": {"S": "e1"},
            "event_type": {"S": "task_failed"},
            "timestamp": {"N": "1763900000"},
        }
    )
    tables.put_event("good", "e1", "task_failed", metadata={"error_message": "tests failed"})

    event = tables.next_batch()
    response = invoke(event)

    assert reported(response) == sequence_numbers(event)[:2]
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1
    assert (
        "Failed" in github.comments_on(REPO, PR_NUMBER)[0] and "tests failed" in github.comments_on(REPO, PR_NUMBER)[0]
    )


def test_a_poison_record_holds_back_the_later_records_of_its_task_only(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke
) -> None:
    pr_task(tables, "poisoned")
    pr_task(tables, "other", pr_number=8)
    tables.put_raw_event(
        {
            "task_id": {"S": "poisoned"},
            "event_id": {"S": "e1"},
            "event_type": {"S": "task_failed"},
            "timestamp": {"S": "2026-11-23T10:00:00Z"},
            "metadata": {"S": "not a map"},
        }
    )
    tables.put_event("poisoned", "e2", "task_completed")
    tables.put_event("other", "e1", "task_completed")

    event = tables.next_batch()
    response = invoke(event)

    assert reported(response) == sequence_numbers(event)[:2]
    assert github.comments_on(REPO, PR_NUMBER) == []  # e2 of the poisoned task was not run
    assert len(github.comments_on(REPO, 8)) == 1


def test_event_type_nobody_subscribes_to_is_acknowledged_without_delivery(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "status_response")
    tables.put_event("t-1", "e2", "something_new")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert github.received() == [] and moto_sent_emails(aws.endpoint) == []


def test_event_for_a_missing_task_row_is_reported(tables: FanOutTables, github: GitHubStub, invoke: Invoke) -> None:
    pr_task(tables, "exists")
    tables.put_event("ghost", "e1", "task_completed")
    tables.put_event("exists", "e1", "task_completed")

    event = tables.next_batch()
    response = invoke(event)

    assert reported(response) == sequence_numbers(event)[:1]
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1


def test_remove_records_are_ignored(tables: FanOutTables, github: GitHubStub, invoke: Invoke) -> None:
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_cancelled")
    invoke(tables.next_batch())
    tables.delete_event("t-1", "e1")

    event = tables.next_batch()
    response = invoke(event)

    assert [record["eventName"] for record in event["Records"]] == ["REMOVE"]
    assert reported(response) == []
    assert len(github.received("PATCH")) == 0  # nothing re-sent for the delete


@pytest.mark.usefixtures("repo_secret_prefix")
def test_repo_specific_token_is_used_when_the_repo_row_has_one(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
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


@pytest.mark.usefixtures("repo_secret_prefix")
def test_a_cold_container_reads_the_token_secret_and_repo_row_once_for_a_whole_batch(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    secrets = boto3.client("secretsmanager", endpoint_url=aws.endpoint)
    arn = secrets.create_secret(Name="bgagent/github/octo", SecretString='{"token": "ghp_repo"}')["ARN"]
    tables.put_repo(REPO, github_token_secret_arn=arn)
    github.accepted_tokens = {"ghp_repo"}
    numbers = range(1, 13)  # twelve tasks of one repo start at once on the cold container
    for number in numbers:
        pr_task(tables, f"t-{number}", pr_number=number)
        tables.put_event(f"t-{number}", "e1", "task_completed")
    reads: list[str] = []

    def count_secret_read(**_: Any) -> None:
        reads.append("secret")

    def count_repo_read(params: dict[str, Any], **_: Any) -> None:
        if params.get("TableName") == REPO_TABLE:
            reads.append("repo row")

    # counted on the container's own (cached) clients, the ones the handler calls through
    events = "before-parameter-build.secrets-manager.GetSecretValue", "before-parameter-build.dynamodb.GetItem"
    client("secretsmanager").meta.events.register(events[0], count_secret_read)
    client("dynamodb").meta.events.register(events[1], count_repo_read)

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert all(len(github.comments_on(REPO, number)) == 1 for number in numbers)
    assert {r.token for r in github.received()} == {"ghp_repo"}
    assert sorted(reads) == ["repo row", "secret"]


def test_a_token_rotation_met_by_many_tasks_at_once_rereads_the_secret_once(
    tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer
) -> None:
    numbers = range(1, 13)
    for number in numbers:
        pr_task(tables, f"t-{number}", pr_number=number)
        tables.put_event(f"t-{number}", "e1", "pr_created")
    assert reported(invoke(tables.next_batch())) == []  # the old token is now cached in the container
    boto3.client("secretsmanager", endpoint_url=aws.endpoint).put_secret_value(
        SecretId=GITHUB_SECRET_NAME, SecretString="ghp_rotated"
    )
    github.accepted_tokens = {"ghp_rotated"}
    for number in numbers:
        tables.put_event(f"t-{number}", "e2", "task_completed")
    reads: list[str] = []
    client("secretsmanager").meta.events.register(
        "before-parameter-build.secrets-manager.GetSecretValue", lambda **_: reads.append("secret")
    )

    response = invoke(tables.next_batch())  # every task meets the 401 with the old token

    assert reported(response) == []
    for number in numbers:
        [comment] = github.comments_on(REPO, number)
        assert "Completed" in comment
    assert {r.token for r in github.received() if r.status == 200 and r.method == "PATCH"} == {"ghp_rotated"}
    assert reads == ["secret"]  # read again once, not once per task that met the 401


def test_per_task_overrides(tables: FanOutTables, github: GitHubStub, invoke: Invoke, aws: MotoServer) -> None:
    pr_task(
        tables,
        "quiet",
        notifications={"github": {"enabled": False}, "email": {"events": ["task_failed"], "recipients": [RECIPIENT]}},
    )
    pr_task(
        tables,
        "chatty",
        issue_number=9,
        pr_number=None,
        notifications={"github": {"events": ["default", "agent_error"]}},
    )
    tables.put_event("quiet", "e1", "task_completed")
    tables.put_event("chatty", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert github.comments_on(REPO, PR_NUMBER) == []
    assert len(github.comments_on(REPO, 9)) == 1  # issue comment when the task has no PR
    assert moto_sent_emails(aws.endpoint) == []  # quiet mails only failures; chatty has no recipients


def test_malformed_notification_settings_fail_the_record(tables: FanOutTables, invoke: Invoke) -> None:
    pr_task(tables, "t-1", notifications={"github": {"events": "task_completed"}})
    tables.put_event("t-1", "e1", "task_completed")

    event = tables.next_batch()

    assert reported(invoke(event)) == sequence_numbers(event)


def test_per_task_cap_drops_events_beyond_twenty(tables: FanOutTables, github: GitHubStub, invoke: Invoke) -> None:
    pr_task(tables, "flood")
    for n in range(22):
        tables.put_event("flood", f"e{n:02d}", "pr_created")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    comments = github.comments_on(REPO, PR_NUMBER)
    assert len(comments) == 1 and "`e19`" in comments[0]  # e20 and e21 were dropped


def test_no_channel_configured_fails_the_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLACK_SECRET_PREFIX", "GITHUB_TOKEN_SECRET_ARN", "EMAIL_SENDER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASK_TABLE_NAME", "Tasks")

    with pytest.raises(ConfigurationError, match="no channel is configured"):
        fresh_handler_module()


def test_a_configured_channel_without_task_table_fails_the_cold_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_TABLE_NAME", raising=False)
    monkeypatch.delenv("SLACK_SECRET_PREFIX", raising=False)
    monkeypatch.delenv("GITHUB_TOKEN_SECRET_ARN", raising=False)
    monkeypatch.setenv("EMAIL_SENDER", "bot@example.com")

    with pytest.raises(ConfigurationError, match="TASK_TABLE_NAME is required"):
        fresh_handler_module()


def test_slack_is_wired_when_its_prefix_is_set(fanout_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_SECRET_PREFIX", "bgagent/slack/")

    module: ModuleType = fresh_handler_module()

    assert module.router.channels == ("slack", "github", "email")


def test_all_three_channels_through_the_handler(
    fanout_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tables: FanOutTables,
    github: GitHubStub,
    aws: MotoServer,
) -> None:
    from tests.support.fanout_stream import FakeLambdaContext
    from tests.support.slack_stub import running_slack_stub

    boto3.client("secretsmanager", endpoint_url=aws.endpoint).create_secret(
        Name="bgagent/slack/T1", SecretString="xoxb-team-1"
    )
    with running_slack_stub() as slack:
        monkeypatch.setenv("SLACK_SECRET_PREFIX", "bgagent/slack/")
        monkeypatch.setenv("SLACK_API_URL", slack.base_url)
        module = fresh_handler_module()
        root = slack.add_message("C1", "<@UBOT> fix the flaky test")
        pr_task(
            tables,
            "t-1",
            channel_source="slack",
            channel_metadata={
                "slack_team_id": "T1",
                "slack_channel_id": "C1",
                "slack_thread_ts": root,
            },
        )
        tables.put_event("t-1", "e1", "task_created")
        tables.put_event("t-1", "e2", "task_completed")

        response = module.handler(tables.next_batch(), FakeLambdaContext())

        assert reported(response) == []
        replies = slack.replies("C1", root)
        assert len(replies) == 1 and replies[0].token == "xoxb-team-1"  # the created message was cleaned up
        assert "completed" in (replies[0].text or "").lower()
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1
    assert [m["subject"] for m in moto_sent_emails(aws.endpoint)] == ["[bgagent] Task t-1 completed"]


@pytest.mark.parametrize("key", ["token", "bot_token"])
def test_a_github_secret_in_json_with_either_key_authenticates(
    key: str, tables: FanOutTables, github: GitHubStub, github_secret_arn: str, invoke: Invoke
) -> None:
    client("secretsmanager").put_secret_value(SecretId=github_secret_arn, SecretString=json.dumps({key: "ghp_json"}))
    pr_task(tables, "t-1")
    tables.put_event("t-1", "e1", "task_completed")

    response = invoke(tables.next_batch())

    assert reported(response) == []
    assert {r.token for r in github.received()} == {"ghp_json"}
    assert len(github.comments_on(REPO, PR_NUMBER)) == 1
