"""cdk.json context parsing: defaults, and one clear line for each malformed value."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError, load_config


def test_defaults_enable_every_subsystem() -> None:
    config = load_config({"fanout": {"email_sender": "agent@example.com"}})
    assert config.subsystems == ("fanout", "export_runner")
    assert config.alarm_topic_arn is None
    assert config.fanout.slack_secret_prefix is None
    assert config.export_runner.deletion_protection is True


def test_values_are_read() -> None:
    config = load_config(
        {
            "subsystems": "fanout",
            "alarm_topic_arn": "arn:aws:sns:eu-west-1:123456789012:ops",
            "fanout": {"slack_secret_prefix": "bgagent/slack/", "email_sender": "a@example.com"},
        }
    )
    assert config.subsystems == ("fanout",)
    assert config.alarm_topic_arn == "arn:aws:sns:eu-west-1:123456789012:ops"
    assert config.fanout.email_sender == "a@example.com"


def test_github_repo_secret_prefix_is_read_with_github() -> None:
    github = {"github_token_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gh-AbCdEf"}
    config = load_config({"fanout": {**github, "github_repo_secret_prefix": "bgagent/github/"}})
    assert config.fanout.github_repo_secret_prefix == "bgagent/github/"
    assert load_config({"fanout": github}).fanout.github_repo_secret_prefix is None


_GITHUB_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gh-AbCdEf"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (
            {"fanout": {"email_sender": "a@example.com", "github_repo_secret_prefix": "bgagent/github/"}},
            "github_repo_secret_prefix needs fanout.github_token_secret_arn",
        ),
        (
            {"fanout": {"github_token_secret_arn": _GITHUB_ARN, "github_repo_secret_prefix": "bgagent/*"}},
            "github_repo_secret_prefix must be a secret name prefix",
        ),
        (
            {"fanout": {"github_token_secret_arn": _GITHUB_ARN, "github_repo_secret_prefix": "arn:aws:x"}},
            "github_repo_secret_prefix must be a secret name prefix",
        ),
        (
            {"fanout": {"github_token_secret_arn": _GITHUB_ARN, "github_repo_secret_prefix": 3}},
            "github_repo_secret_prefix must be a string",
        ),
        ({"subsystems": ["fanout", "mailer"]}, "unknown subsystem 'mailer'"),
        ({"subsystems": ["fanout"]}, "context fanout: set at least one of slack_secret_prefix"),
        ({"subsystems": 3}, "must be a list"),
        ({"alarm_topic_arn": "ops-topic"}, "alarm_topic_arn must be an ARN of sns"),
        ({"alarm_topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"}, "ARN of sns"),
        ({"fanout": {"github_token_secret_arn": "token"}}, "github_token_secret_arn must be an ARN"),
        ({"fanout": {"email_sender": "not-an-address"}}, "must be an email address"),
        ({"fanout": {"slack_prefix": "x"}}, "unknown keys ['slack_prefix']"),
        ({"fanout": ["x"]}, "context fanout must be an object"),
        ({"export_runner": {"deletion_protection": "yes"}}, "true or false"),
    ],
)
def test_malformed_values_name_the_key(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(context)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
