"""pytest fixtures shared by the fan-out integration and reliability tests (imported by their conftest)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest

from handlers.common.aws import reset_clients
from tests.support.fanout_stream import (
    EMAIL_SENDER,
    REPO_TABLE,
    TASK_TABLE,
    FakeLambdaContext,
    FanOutTables,
    fresh_handler_module,
)
from tests.support.github_stub import GitHubStub
from tests.support.moto_server import MotoServer

GITHUB_TOKEN = "ghp_stackwide"
GITHUB_SECRET_NAME = "bgagent/github-token"
REPO = "octo/widgets"
PR_NUMBER = 7
RECIPIENT = "dev@example.com"


@pytest.fixture
def tables(aws: MotoServer) -> FanOutTables:
    return FanOutTables(aws.endpoint).create()


@pytest.fixture
def github() -> Iterator[GitHubStub]:
    with GitHubStub() as stub:
        yield stub


@pytest.fixture
def github_secret_arn(aws: MotoServer) -> str:
    secrets = boto3.client("secretsmanager", endpoint_url=aws.endpoint)
    return str(secrets.create_secret(Name=GITHUB_SECRET_NAME, SecretString=GITHUB_TOKEN)["ARN"])


@pytest.fixture
def verified_sender(aws: MotoServer) -> str:
    boto3.client("sesv2", endpoint_url=aws.endpoint).create_email_identity(EmailIdentity=EMAIL_SENDER)
    return EMAIL_SENDER


@pytest.fixture
def fanout_env(
    monkeypatch: pytest.MonkeyPatch,
    tables: FanOutTables,
    github: GitHubStub,
    github_secret_arn: str,
    verified_sender: str,
) -> dict[str, str]:
    """GitHub and email configured (Slack is not: these tests must not depend on it)."""
    env = {
        "TASK_TABLE_NAME": TASK_TABLE,
        "REPO_TABLE_NAME": REPO_TABLE,
        "GITHUB_TOKEN_SECRET_ARN": github_secret_arn,
        "GITHUB_API_URL": github.url,
        "EMAIL_SENDER": verified_sender,
    }
    monkeypatch.delenv("SLACK_SECRET_PREFIX", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def fanout(fanout_env: dict[str, str]) -> Iterator[ModuleType]:
    """The handler module after a cold start in the configured environment."""
    reset_clients()
    yield fresh_handler_module()
    reset_clients()


@pytest.fixture
def invoke(fanout: ModuleType) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def run(event: dict[str, Any]) -> dict[str, Any]:
        return dict(fanout.handler(event, FakeLambdaContext()))

    return run


def pr_task(tables: FanOutTables, task_id: str, **extra: Any) -> None:
    """A task with a PR on REPO and email recipients -- every channel has something to do."""
    row: dict[str, Any] = {
        "repo": REPO,
        "pr_number": PR_NUMBER,
        "channel_source": "api",
        "channel_metadata": {},
        "notifications": {"email": {"recipients": [RECIPIENT]}},
    }
    row.update(extra)
    tables.put_task(task_id, **row)
