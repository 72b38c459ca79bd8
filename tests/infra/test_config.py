"""cdk.json context parsing: defaults, and one clear line for each malformed value."""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError, ExecutionEngineConfig, load_config


def test_defaults_enable_every_subsystem() -> None:
    config = load_config({"fanout": {"email_sender": "agent@example.com"}})
    assert config.subsystems == ("fanout", "export_runner", "stream_recovery", "job_claim", "execution_engine")
    assert config.alarm_topic_arn is None
    assert config.fanout.slack_secret_prefix is None
    assert config.export_runner.deletion_protection is True
    assert config.stream_recovery.existing_tables is None
    assert config.execution_engine == ExecutionEngineConfig(
        credential_parameter_prefixes=(),
        credential_secret_prefixes=(),
        code_bucket_arns=(),
        sops_key_parameter_prefix="/execution-engine/sops-keys/",
    )


def test_execution_engine_section_is_read() -> None:
    config = load_config(
        {
            "subsystems": ["execution_engine"],
            "execution_engine": {
                "credential_parameter_prefixes": ["/app/credentials/", "/shared/"],
                "credential_secret_prefixes": ["app/credentials/"],
                "code_bucket_arns": ["arn:aws:s3:::acme-code"],
                "sops_key_parameter_prefix": "/ci/sops/",
            },
        }
    )
    assert config.subsystems == ("execution_engine",)
    assert config.execution_engine == ExecutionEngineConfig(
        credential_parameter_prefixes=("/app/credentials/", "/shared/"),
        credential_secret_prefixes=("app/credentials/",),
        code_bucket_arns=("arn:aws:s3:::acme-code",),
        sops_key_parameter_prefix="/ci/sops/",
    )
    # cdk.json's nulls and empty lists mean the defaults.
    nulls = {key: None for key in ("credential_parameter_prefixes", "code_bucket_arns", "sops_key_parameter_prefix")}
    assert load_config({"subsystems": ["execution_engine"], "execution_engine": nulls}).execution_engine == (
        ExecutionEngineConfig()
    )


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
_TABLE = "arn:aws:dynamodb:eu-west-1:123456789012:table/app-{}"
_STREAM_RECOVERY_TABLES = {
    f"{role}_table_arn": _TABLE.format(role)
    for role in ("tasks", "task_events", "push_configs", "pending_dispatches", "deliveries")
} | {"pending_dispatches_stream_arn": _TABLE.format("pending_dispatches") + "/stream/2026-01-01T00:00:00.000"}


def test_existing_stream_recovery_tables_are_read_all_together() -> None:
    key = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"
    existing = load_config(
        {"subsystems": ["stream_recovery"], "stream_recovery": {**_STREAM_RECOVERY_TABLES, "tables_kms_key_arn": key}}
    ).stream_recovery
    assert existing.existing_tables is not None
    assert existing.existing_tables.deliveries_table_arn == _TABLE.format("deliveries")
    assert existing.existing_tables.kms_key_arn == key


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
        (
            {"subsystems": ["stream_recovery"], "stream_recovery": {"tasks_table_arn": _TABLE.format("tasks")}},
            "context stream_recovery: existing tables need tasks_table_arn, task_events_table_arn",
        ),
        (
            {
                "subsystems": ["stream_recovery"],
                "stream_recovery": {**_STREAM_RECOVERY_TABLES, "tasks_table_arn": "arn:aws:dynamodb:eu-west-1:1:x"},
            },
            "stream_recovery.tasks_table_arn must be an ARN of dynamodb",
        ),
        (
            {
                "subsystems": ["stream_recovery"],
                "stream_recovery": {**_STREAM_RECOVERY_TABLES, "pending_dispatches_stream_arn": _TABLE.format("x")},
            },
            "pending_dispatches_stream_arn must be a DynamoDB ARN ending in table/<name>/stream/<label>",
        ),
        (
            {
                "subsystems": ["stream_recovery"],
                "stream_recovery": {
                    **_STREAM_RECOVERY_TABLES,
                    "pending_dispatches_stream_arn": _TABLE.format("tasks") + "/stream/2026-01-01T00:00:00.000",
                },
            },
            "pending_dispatches_stream_arn must be a stream of pending_dispatches_table_arn",
        ),
        (
            {
                "subsystems": ["stream_recovery"],
                "stream_recovery": {"tables_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/abc"},
            },
            "tables_kms_key_arn is the key of existing tables",
        ),
        (
            {"subsystems": ["stream_recovery"], "stream_recovery": {"tasks_table": "x"}},
            "context stream_recovery has unknown keys ['tasks_table']",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"credential_prefixes": ["/a/"]}},
            "context execution_engine has unknown keys ['credential_prefixes']",
        ),
        ({"subsystems": ["execution_engine"], "execution_engine": "on"}, "context execution_engine must be an object"),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"credential_parameter_prefixes": "/app/"}},
            "execution_engine.credential_parameter_prefixes must be a list of strings",
        ),
        (
            {
                "subsystems": ["execution_engine"],
                "execution_engine": {"credential_parameter_prefixes": ["app/credentials/"]},
            },
            "execution_engine.credential_parameter_prefixes: 'app/credentials/' is not an SSM parameter name prefix",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"credential_parameter_prefixes": ["/"]}},
            "execution_engine.credential_parameter_prefixes: '/' is not an SSM parameter name prefix",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"credential_parameter_prefixes": ["/a/", "/a/"]}},
            "execution_engine.credential_parameter_prefixes lists an entry twice",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"credential_secret_prefixes": ["app/*"]}},
            "execution_engine.credential_secret_prefixes: 'app/*' is not a secret name prefix",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"code_bucket_arns": ["acme-code"]}},
            "execution_engine.code_bucket_arns: 'acme-code' is not an S3 bucket ARN",
        ),
        (
            {
                "subsystems": ["execution_engine"],
                "execution_engine": {"code_bucket_arns": ["arn:aws:s3:::acme-code/orders/"]},
            },
            "is not an S3 bucket ARN",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"sops_key_parameter_prefix": "/keys"}},
            "execution_engine.sops_key_parameter_prefix must be an SSM parameter path that starts and ends with /",
        ),
        (
            {"subsystems": ["execution_engine"], "execution_engine": {"sops_key_parameter_prefix": 7}},
            "execution_engine.sops_key_parameter_prefix must be a string",
        ),
    ],
)
def test_malformed_values_name_the_key(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(context)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
