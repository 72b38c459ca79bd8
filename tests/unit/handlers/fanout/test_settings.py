"""Cold-start settings: which channels are configured, what each one requires."""

from __future__ import annotations

import pytest

from handlers.common.config import ConfigurationError
from handlers.fanout.settings import DEFAULT_GITHUB_API_URL, load_settings


def test_no_channel_configured_is_a_broken_deployment() -> None:
    with pytest.raises(ConfigurationError, match="no channel is configured"):
        load_settings({"TASK_TABLE_NAME": "Tasks"})


def test_task_table_is_required_once_a_channel_is_configured() -> None:
    with pytest.raises(ConfigurationError, match="TASK_TABLE_NAME is required"):
        load_settings({"SLACK_SECRET_PREFIX": "bgagent/slack/"})


def test_only_the_configured_channels_are_enabled() -> None:
    settings = load_settings({"TASK_TABLE_NAME": "Tasks", "EMAIL_SENDER": "bot@example.com"})

    assert settings.configured_channels == ("email",)
    assert settings.slack is None and settings.github is None
    assert settings.email is not None and settings.email.sender == "bot@example.com"


def test_every_channel_with_its_options() -> None:
    settings = load_settings(
        {
            "TASK_TABLE_NAME": "Tasks",
            "REPO_TABLE_NAME": "Repos",
            "GITHUB_TOKEN_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:gh",
            "GITHUB_API_URL": "https://github.example.com/api/v3/",
            "SLACK_SECRET_PREFIX": "bgagent/slack/",
            "SLACK_API_URL": "http://127.0.0.1:9999/api/",
            "EMAIL_SENDER": "bot@example.com",
            "FANOUT_MAX_CONCURRENCY": "32",
        }
    )

    assert settings.configured_channels == ("slack", "github", "email")
    assert settings.github is not None and settings.github.api_url == "https://github.example.com/api/v3"
    assert settings.github.repo_table_name == "Repos"
    assert settings.slack is not None and settings.slack.api_url == "http://127.0.0.1:9999/api/"
    assert settings.max_concurrency == 32


def test_defaults() -> None:
    settings = load_settings({"TASK_TABLE_NAME": "Tasks", "GITHUB_TOKEN_SECRET_ARN": "arn"})

    assert settings.github is not None and settings.github.api_url == DEFAULT_GITHUB_API_URL
    assert settings.github.repo_table_name is None
    assert settings.max_concurrency == 32


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(
            {
                "GITHUB_TOKEN_SECRET_ARN": "arn",
                "GITHUB_API_URL": "ftp://nope",
                "EMAIL_SENDER": "not-an-address",
                "FANOUT_MAX_CONCURRENCY": "0",
            }
        )

    message = str(raised.value)
    for name in ("TASK_TABLE_NAME", "GITHUB_API_URL", "EMAIL_SENDER", "FANOUT_MAX_CONCURRENCY"):
        assert name in message
