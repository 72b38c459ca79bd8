"""FanOutStack: the application's own tables from cdk.json are used (not created), with their key."""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk.assertions import Template

from infra.config import load_config
from infra.stacks.fanout_stack import FanOutStack
from tests.infra.synth import app_without_bundling

TABLE = "arn:aws:dynamodb:eu-west-1:123456789012:table/{}"
EVENTS_STREAM = TABLE.format("task-events") + "/stream/2026-01-01T00:00:00.000"
TABLES_KEY = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
SECRETS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000"
GITHUB = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gh-AbCdEf"


def _template(fanout: dict[str, object]) -> Template:
    config = load_config({"subsystems": ["fanout"], "fanout": fanout})
    app = app_without_bundling()
    stack = FanOutStack(
        app,
        "FanOut",
        config=config.fanout,
        alarm_topic_arn=None,
        env=cdk.Environment(account="123456789012", region="eu-west-1"),
    )
    return Template.from_stack(stack)


def test_existing_tables_are_read_from_context_with_their_key() -> None:
    template = _template(
        {
            "slack_secret_prefix": "bgagent/slack/",
            "github_token_secret_arn": GITHUB,
            "task_events_table_arn": TABLE.format("task-events"),
            "task_events_stream_arn": EVENTS_STREAM,
            "task_table_arn": TABLE.format("tasks"),
            "repo_table_arn": TABLE.format("repos"),
            "tables_kms_key_arn": TABLES_KEY,
            "secrets_kms_key_arn": SECRETS_KEY,
            "github_api_url": "https://github.example.com/api/v3",
        }
    )
    template.resource_count_is("AWS::DynamoDB::Table", 0)
    template.has_resource_properties("AWS::Lambda::EventSourceMapping", {"EventSourceArn": EVENTS_STREAM})
    rendered = json.dumps(template.find_resources("AWS::IAM::Policy"))
    assert TABLE.format("tasks") in rendered and TABLE.format("repos") in rendered
    assert TABLES_KEY in rendered and "dynamodb.eu-west-1.amazonaws.com" in rendered
    assert SECRETS_KEY in rendered and "secretsmanager.eu-west-1.amazonaws.com" in rendered
    (function,) = template.find_resources("AWS::Lambda::Function").values()
    assert function["Properties"]["Environment"]["Variables"]["GITHUB_API_URL"] == "https://github.example.com/api/v3"


def test_without_table_arns_the_stack_creates_its_tables() -> None:
    template = _template({"slack_secret_prefix": "bgagent/slack/"})
    template.resource_count_is("AWS::DynamoDB::Table", 2)  # events and tasks; repos come with GitHub
